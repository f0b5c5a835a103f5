"""Every WorkflowTemplate in workflows/ and every Workflow the operator renders is accepted by the
real Argo CRDs (full schema, strict field validation) on the real API server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from fmop.api import FoundationModel, TaskAdapter
from fmdev.local.common import ClusterError
from fmop.training.render import Target, render_foundation_model, render_task_adapter
from fmop.training.planner import plan as plan_training
from tests.conftest import load_example

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
IMAGE = "localhost/fmop/fmrec:test"
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture
def ns(control_plane: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}], "test namespace")
    return name


def _owner(control_plane: Any, ns: str, example: str) -> dict[str, Any]:
    """The example object created for real, so ownerReferences carry a real uid."""
    obj = load_example(example)
    obj["metadata"]["namespace"] = ns
    control_plane.apply([obj], example)
    got: dict[str, Any] = yaml.safe_load(control_plane.kubectl("get", obj["kind"].lower(), obj["metadata"]["name"], "-n", ns, "-o", "yaml").stdout)
    return got


def test_every_workflow_template_is_accepted(control_plane: Any, ns: str) -> None:
    templates = [yaml.safe_load(p.read_text()) for p in sorted(WORKFLOWS.glob("*.yaml"))]
    assert {t["metadata"]["name"] for t in templates} >= {"fmop-foundation-model", "fmop-task-adapter", "fmop-node-check"}
    for t in templates:
        t["metadata"]["namespace"] = ns
    control_plane.apply(templates, "workflows/*.yaml")
    names = control_plane.kubectl("get", "workflowtemplates", "-n", ns, "-o", "name").stdout.split()
    assert len(names) == len(templates)


@pytest.mark.parametrize("resources", [
    pytest.param({"gpus": 0, "cpu": "1", "memory": "2Gi"}, id="cpu"),
    pytest.param({"gpus": 8, "nodes": 2, "cpu": "16", "memory": "64Gi", "nodeSelector": {"gpu": "h100"}}, id="8-gpus-2-nodes"),
])
def test_rendered_foundation_model_workflows_are_accepted(control_plane: Any, ns: str, resources: dict[str, Any]) -> None:
    owner = _owner(control_plane, ns, "foundationmodel.yaml")
    owner["spec"]["resources"] = resources
    plan = plan_training(owner, [], NOW, image=IMAGE)
    assert plan.create is not None
    control_plane.apply([plan.create], "rendered FoundationModel Workflow")
    got = yaml.safe_load(control_plane.kubectl("get", "workflow", plan.create["metadata"]["name"], "-n", ns, "-o", "yaml").stdout)
    assert got["spec"] == plan.create["spec"]  # nothing pruned by the schema
    assert got["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]


def test_rendered_task_adapter_workflow_is_accepted(control_plane: Any, ns: str) -> None:
    fm = _owner(control_plane, ns, "foundationmodel.yaml")
    fm["status"] = {"latestVersion": "v1", "versions": [{"version": "v1", "artifactUri": "pvc://fmop-models/a/triton",
                                                         "checkpointUri": "pvc://fmop-models/a/checkpoint"}]}
    ta = _owner(control_plane, ns, "taskadapter.yaml")
    plan = plan_training(ta, [], NOW, image=IMAGE, foundation_model=fm)
    assert plan.create is not None
    control_plane.apply([plan.create], "rendered TaskAdapter Workflow")
    got = yaml.safe_load(control_plane.kubectl("get", "workflow", plan.create["metadata"]["name"], "-n", ns, "-o", "yaml").stdout)
    assert got["spec"] == plan.create["spec"]


def test_the_schema_is_strict_enough_to_catch_a_rendering_mistake(control_plane: Any, ns: str) -> None:
    fm = FoundationModel.model_validate(load_example("foundationmodel.yaml"))
    wf = render_foundation_model(fm, Target(ns, "movielens", "00000000-0000-0000-0000-000000000000", 1, "v1"), IMAGE)
    wf["spec"]["workflowTemplateRef"] = {"nmae": "fmop-foundation-model"}  # a typo the real schema must refuse
    with pytest.raises(ClusterError, match="nmae"):
        control_plane.apply([wf], "a Workflow with a typo")
    ta = TaskAdapter.model_validate(load_example("taskadapter.yaml"))
    bad = render_task_adapter(ta, Target(ns, "west-coast", "00000000-0000-0000-0000-000000000000", 1, "v1"), "v1", "pvc://fmop-models/a", IMAGE)
    bad["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", "seconds": 1}]
    with pytest.raises(ClusterError, match="seconds"):
        control_plane.apply([bad], "a Workflow with an unknown toleration field")
