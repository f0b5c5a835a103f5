"""Training: Workflow rendering and FoundationModel / TaskAdapter version bookkeeping (pure)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from fmop.api import FoundationModel, TaskAdapter
from fmop.conditions import Cond
from fmop.training.render import (
    FM_TEMPLATE,
    LABEL_BASE,
    LABEL_GENERATION,
    LABEL_VERSION,
    RenderError,
    Target,
    render_foundation_model,
    render_task_adapter,
    workflow_name,
)
from fmop.training import planner
from fmop.training.planner import StepLog, gate, with_log
from tests.conftest import REPO, load_example

IMAGE = "localhost/fmop/fmrec:test"
NOW = "2026-01-01T00:00:00Z"


def fm_obj(generation: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    obj = load_example("foundationmodel.yaml")
    obj["metadata"] = {"name": "movielens", "namespace": "ns", "uid": "fm-uid", "generation": generation}
    obj["spec"].update(spec)
    if status is not None:
        obj["status"] = status
    return obj


def ta_obj(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = load_example("taskadapter.yaml")
    obj["metadata"] = {"name": obj["metadata"]["name"], "namespace": "ns", "uid": "ta-uid", "generation": generation}
    if status is not None:
        obj["status"] = status
    return obj


def params(wf: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}


def finished(wf: dict[str, Any], phase: str, metrics: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    """The rendered Workflow as the Argo controller leaves it."""
    name = wf["metadata"]["name"]
    out = {"parameters": [{"name": "metrics", "value": json.dumps(metrics or {})},
                          {"name": "data", "value": json.dumps({"dataFingerprint": "d1", "featureFingerprint": "f1"})}]}
    return {**wf, "metadata": {**wf["metadata"], "creationTimestamp": NOW},
            "status": {"phase": phase, "progress": "4/4" if phase == "Succeeded" else "1/4",
                       "nodes": {name: {"id": name, "type": "Steps", "phase": phase, "outputs": out}}, **status}}


def cond(plan_conds: list[Cond], type_: str) -> Cond:
    return next(c for c in plan_conds if c.type == type_)


# ---------------------------------------------------------------- rendering
def test_foundation_model_workflow_references_the_template_and_is_owned_and_labelled() -> None:
    fm = FoundationModel.model_validate(fm_obj())
    wf = render_foundation_model(fm, Target("ns", "movielens", "fm-uid", 3, "v2"), IMAGE)
    assert wf["apiVersion"] == "argoproj.io/v1alpha1" and wf["kind"] == "Workflow"
    assert wf["metadata"]["name"] == "movielens-v2-g3"
    assert wf["spec"]["workflowTemplateRef"] == {"name": FM_TEMPLATE}
    assert wf["metadata"]["ownerReferences"] == [{"apiVersion": "fmops.dev/v1alpha1", "kind": "FoundationModel", "name": "movielens",
                                                  "uid": "fm-uid", "controller": True, "blockOwnerDeletion": True}]
    assert wf["metadata"]["labels"][LABEL_VERSION] == "v2" and wf["metadata"]["labels"][LABEL_GENERATION] == "3"
    p = params(wf)
    assert p["image"] == IMAGE and p["version-dir"] == "ns/foundationmodels/movielens/v2"
    assert p["data"] == "movielens100k" and p["epochs"] == str(fm.spec.training.epochs)
    assert p["event-fields"] == ",".join(fm.spec.architecture.eventFields)
    assert p["objectives"] == ",".join(f"{o.type}={o.weight!r}" for o in fm.spec.objectives)


def test_training_settings_reach_the_trainer_as_the_template_passes_them() -> None:
    """spec.training -> Workflow parameters -> the pretrain step's arguments -> fmrec train's TrainSettings."""
    from fmrec.__main__ import parser
    from fmrec.cli.args import settings_from

    fm = FoundationModel.model_validate(fm_obj(training={"epochs": 7, "learningRate": 0.003, "weightDecay": 0.05,
                                                         "windowStride": 25, "weightAverage": 0.99}))
    rendered = params(render_foundation_model(fm, Target("ns", "movielens", "u", 1, "v1"), IMAGE))
    template = yaml.safe_load((REPO / "workflows" / "foundation-model.yaml").read_text())
    pretrain = next(t for t in template["spec"]["templates"] if t["name"] == "pretrain")
    args = pretrain["container"]["args"]
    cli = [re.sub(r"\{\{workflow\.parameters\.([a-z-]+)\}\}", lambda m: rendered[m.group(1)], a) for a in args[args.index("fmrec") + 1:]]
    settings = settings_from(parser().parse_args(cli))
    assert (settings.epochs, settings.lr, settings.weight_decay, settings.stride, settings.ema) == (7, 0.003, 0.05, 25, 0.99)
    default = params(render_foundation_model(FoundationModel.model_validate(fm_obj()), Target("ns", "movielens", "u", 1, "v1"), IMAGE))
    assert default["window-stride"] == str(fm.spec.architecture.contextLength) and default["weight-average"] == "0.0"


@pytest.mark.parametrize(("resources", "nproc", "gpu", "tolerations"), [
    pytest.param({"gpus": 0, "cpu": "1", "memory": "2Gi"}, "1", None, None, id="cpu-only"),
    pytest.param({"gpus": 8, "nodes": 2, "cpu": "16", "memory": "64Gi"}, "8", "8",
                 [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], id="8-gpus-2-nodes"),
])
def test_resources_become_torchrun_parameters_and_pod_resources(resources: dict[str, Any], nproc: str, gpu: str | None,
                                                                tolerations: list[dict[str, str]] | None) -> None:
    fm = FoundationModel.model_validate(fm_obj(resources=resources))
    wf = render_foundation_model(fm, Target("ns", "movielens", "u", 1, "v1"), IMAGE)
    assert params(wf)["nproc-per-node"] == nproc and params(wf)["nnodes"] == str(resources.get("nodes", 1))
    assert params(wf)["threads"] == resources["cpu"]
    patch = json.loads(wf["spec"]["podSpecPatch"])["containers"][0]
    assert patch["name"] == "main" and patch["resources"]["requests"]["memory"] == resources["memory"]
    assert patch["resources"]["limits"].get("nvidia.com/gpu") == gpu
    assert wf["spec"].get("tolerations") == tolerations


def test_the_rendezvous_daemon_takes_back_the_gpus_the_workflow_patch_gives_every_pod() -> None:
    """Two 8-GPU nodes must fit two 8-GPU training pods: the daemon's own podSpecPatch (applied after
    the Workflow's) removes the GPU resource the Workflow names and asks for little CPU and memory."""
    template = yaml.safe_load((REPO / "workflows" / "foundation-model.yaml").read_text())
    declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    fm = FoundationModel.model_validate(fm_obj(resources={"gpus": 8, "nodes": 2, "cpu": "16", "memory": "64Gi",
                                                          "gpuResourceName": "amd.com/gpu"}))
    rendered = params(render_foundation_model(fm, Target("ns", "movielens", "u", 1, "v1"), IMAGE))
    assert set(rendered) <= declared, set(rendered) - declared
    daemon = next(t for t in template["spec"]["templates"] if t["name"] == "rendezvous")
    patch = json.loads(re.sub(r"\{\{workflow\.parameters\.([a-z-]+)\}\}", lambda m: rendered[m.group(1)], daemon["podSpecPatch"]))
    resources = patch["containers"][0]["resources"]
    assert patch["containers"][0]["name"] == "main"
    assert resources["requests"]["amd.com/gpu"] is None and resources["limits"]["amd.com/gpu"] is None
    assert resources["requests"]["cpu"] == "100m" and "cpu" not in resources["limits"]


@pytest.mark.parametrize(("uri", "expected"), [
    pytest.param(None, "ns/foundationmodels/movielens/v1", id="default"),
    pytest.param("pvc://fmop-models/team-a/fm/", "team-a/fm/v1", id="pvc-prefix"),
    pytest.param("s3://models/fm/", RenderError, id="s3-rejected"),
    pytest.param("pvc://other-claim/fm/", RenderError, id="other-claim-rejected"),
])
def test_artifact_uri_prefix(uri: str | None, expected: str | type[Exception]) -> None:
    obj = fm_obj()
    obj["spec"].pop("artifactUri", None)
    if uri:
        obj["spec"]["artifactUri"] = uri
    fm = FoundationModel.model_validate(obj)
    target = Target("ns", "movielens", "u", 1, "v1")
    if isinstance(expected, str):
        assert params(render_foundation_model(fm, target, IMAGE))["version-dir"] == expected
    else:
        with pytest.raises(expected, match="spec.artifactUri"):
            render_foundation_model(fm, target, IMAGE)


@pytest.mark.parametrize(("spec", "field"), [
    pytest.param({"objectives": [{"type": "nextItem", "loss": "sampledSoftmax", "negatives": 100}]}, "spec.objectives[0].loss", id="sampled"),
])
def test_settings_the_trainer_lacks_are_refused_by_name(spec: dict[str, Any], field: str) -> None:
    fm = FoundationModel.model_validate(fm_obj(**spec))
    with pytest.raises(RenderError, match=re.escape(field)):
        render_foundation_model(fm, Target("ns", "movielens", "u", 1, "v1"), IMAGE)


def test_workflow_names_fit_label_values() -> None:
    name = workflow_name("a" * 80, "v12", 1234)
    assert len(name) <= 63 and name.endswith("-v12-g1234")


def test_task_adapter_workflow_slices_and_labels_the_base_version() -> None:
    ta = TaskAdapter.model_validate(ta_obj())
    wf = render_task_adapter(ta, Target("ns", "west", "ta-uid", 2, "v1"), "v3", "pvc://fmop-models/ns/foundationmodels/movielens/v3/checkpoint", IMAGE)
    p = params(wf)
    assert p["base-checkpoint"] == "ns/foundationmodels/movielens/v3/checkpoint"
    assert p["slice"] == f"{ta.spec.task.slice.attribute}={','.join(ta.spec.task.slice.values)}"  # type: ignore[union-attr]
    assert p["task"] == ta.spec.task.name and p["adapter"] == ta.spec.adapter.type
    assert wf["metadata"]["labels"][LABEL_BASE] == "v3" and wf["metadata"]["ownerReferences"][0]["kind"] == "TaskAdapter"


@pytest.mark.parametrize(("adapter", "expected"), [
    pytest.param({"type": "head"}, {"adapter": "head", "dim": "16"}, id="head"),
    pytest.param({"type": "bottleneck", "bottleneck": {"dim": 24}}, {"adapter": "bottleneck", "dim": "24"}, id="bottleneck"),
    pytest.param({"type": "lora"}, {"adapter": "lora", "rank": "8", "alpha": "16.0"}, id="lora-defaults"),
    pytest.param({"type": "lora", "lora": {"rank": 4, "alpha": 8}}, {"adapter": "lora", "rank": "4", "alpha": "8.0"}, id="lora"),
    pytest.param({"type": "distilled"}, {"adapter": "distilled", "layers": "1", "width": "32"}, id="distilled-defaults"),
    pytest.param({"type": "distilled", "distilled": {"layers": 2, "width": 48}}, {"adapter": "distilled", "layers": "2", "width": "48"},
                 id="distilled"),
])
def test_each_adapter_type_passes_its_own_settings(adapter: dict[str, Any], expected: dict[str, str]) -> None:
    obj = ta_obj()
    obj["spec"]["adapter"] = adapter
    p = params(render_task_adapter(TaskAdapter.model_validate(obj), Target("ns", "x", "u", 1, "v1"), "v1", "pvc://fmop-models/a", IMAGE))
    settings = {k: p[k] for k in ("adapter", "dim", "rank", "alpha", "layers", "width") if k in p}
    assert settings == expected


def test_the_task_adapter_template_declares_every_rendered_parameter_and_passes_the_settings_on() -> None:
    template = yaml.safe_load((REPO / "workflows" / "task-adapter.yaml").read_text())
    declared = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    for adapter in ({"type": "lora"}, {"type": "distilled"}, {"type": "bottleneck"}):
        obj = ta_obj()
        obj["spec"]["adapter"] = adapter
        rendered = params(render_task_adapter(TaskAdapter.model_validate(obj), Target("ns", "x", "u", 1, "v1"), "v1", "pvc://fmop-models/a", IMAGE))
        assert set(rendered) <= set(declared), set(rendered) - set(declared)
    # a Workflow rendered before lora/distilled existed still runs: the new parameters have defaults
    assert {k: declared[k] for k in ("rank", "alpha", "layers", "width")} == {"rank": "8", "alpha": "16.0", "layers": "1", "width": "32"}
    step = next(t for t in template["spec"]["templates"] if t["name"] == "finetune")["container"]
    script, positional = step["args"][0], step["args"][1:]
    for flag, name in (("--dim", "dim"), ("--rank", "rank"), ("--alpha", "alpha"), ("--layers", "layers"), ("--width", "width")):
        i = positional.index(f"{{{{workflow.parameters.{name}}}}}")
        ref = f"${i}" if i < 10 else f"${{{i}}}"  # sh -c: $0 is the first argument after the script
        assert f'{flag} "{ref}"' in script, (flag, ref, script)


# ---------------------------------------------------------------- FoundationModel bookkeeping
def test_new_object_submits_v1() -> None:
    plan = planner.plan(fm_obj(), [], NOW, image=IMAGE)
    assert plan.create is not None and plan.create["metadata"]["name"] == "movielens-v1-g1"
    assert plan.verdict.phase == "Training" and plan.verdict.extra["workflowName"] == "movielens-v1-g1"
    assert cond(plan.verdict.conditions, "Training").reason == "WorkflowSubmitted"


def test_no_trainer_image_trains_nothing_and_says_how_to_turn_it_on() -> None:
    plan = planner.plan(fm_obj(), [], NOW, image="")
    assert plan.create is None and plan.verdict.phase == "Pending"
    assert "--trainer-image" in cond(plan.verdict.conditions, "Training").message


def test_running_workflow_shows_training_with_progress() -> None:
    wf = planner.plan(fm_obj(), [], NOW, image=IMAGE).create
    assert wf is not None
    plan = planner.plan(fm_obj(), [finished(wf, "Running")], NOW, image=IMAGE)
    assert plan.create is None and plan.delete == ()
    assert plan.verdict.phase == "Training" and plan.verdict.extra["progress"] == "1/4"


def test_succeeded_workflow_records_v1_with_lineage_and_metrics() -> None:
    wf = planner.plan(fm_obj(), [], NOW, image=IMAGE).create
    assert wf is not None
    done = finished(wf, "Succeeded", {"HR@10": 0.2, "NDCG@10": 0.1})
    plan = planner.plan(fm_obj(), [done], NOW, image=IMAGE)
    assert plan.verdict.phase == "Ready" and plan.verdict.extra["latestVersion"] == "v1"
    [v] = plan.verdict.extra["versions"]
    assert v["artifactUri"] == "pvc://fmop-models/ns/foundationmodels/movielens/v1/triton"
    assert v["checkpointUri"] == "pvc://fmop-models/ns/foundationmodels/movielens/v1/checkpoint"
    assert (v["dataFingerprint"], v["featureFingerprint"], v["specGeneration"], v["createdAt"], v["gate"]) == ("d1", "f1", 1, NOW, "Passed")
    assert v["metrics"]["NDCG@10"] == 0.1 and v["metrics"]["HR@10"] == 0.2 and v["metrics"]["epochs"] == 20
    # the next reconcile, with that status stored, changes nothing and submits nothing
    stored = fm_obj(status={"latestVersion": "v1", "versions": plan.verdict.extra["versions"]})
    again = planner.plan(stored, [done], NOW, image=IMAGE)
    assert again.create is None and again.verdict.extra["versions"] == plan.verdict.extra["versions"]


def test_failed_workflow_names_the_step_and_its_log_tail() -> None:
    wf = planner.plan(fm_obj(), [], NOW, image=IMAGE).create
    assert wf is not None
    bad = finished(wf, "Failed")
    bad["status"]["nodes"]["pod-1"] = {"id": "pod-1", "type": "Pod", "displayName": "pretrain", "phase": "Failed",
                                       "message": "Error (exit code 2)", "finishedAt": NOW}
    asks = planner.plan(fm_obj(), [bad], NOW, image=IMAGE)
    assert asks.read_log == StepLog("movielens-v1-g1", "pod-1"), "the plan asks for the failed step's log"
    plan = with_log(asks, "error: slice attribute 'region' is not in this data\n")
    assert plan.read_log is None
    assert plan.verdict.phase == "Failed" and plan.create is None
    assert "step pretrain failed: Error (exit code 2)" in plan.verdict.message
    assert "slice attribute 'region'" in plan.verdict.message


def test_spec_edit_supersedes_the_running_workflow() -> None:
    old = planner.plan(fm_obj(), [], NOW, image=IMAGE).create
    assert old is not None
    plan = planner.plan(fm_obj(generation=2), [finished(old, "Running")], NOW, image=IMAGE)
    assert plan.create is not None and plan.create["metadata"]["name"] == "movielens-v1-g2"
    assert plan.delete == ("movielens-v1-g1",)


def _annotated(obj: dict[str, Any], revision: str) -> dict[str, Any]:
    obj["metadata"]["annotations"] = {"fmops.dev/data-revision": revision}
    return obj


def test_new_data_revision_trains_a_new_version_of_the_same_spec() -> None:
    wf1 = planner.plan(fm_obj(), [], NOW, image=IMAGE).create
    assert wf1 is not None and "fmops.dev/data-revision" not in wf1["metadata"]["labels"]
    done1 = finished(wf1, "Succeeded", {"NDCG@10": 0.1})
    v1 = planner.plan(fm_obj(), [done1], NOW, image=IMAGE).verdict.extra["versions"]
    assert "dataRevision" not in v1[0]
    stored = fm_obj(status={"latestVersion": "v1", "versions": v1})
    assert planner.plan(stored, [done1], NOW, image=IMAGE).create is None  # nothing new: nothing trains

    # The data pipeline lands a new day and says so: the same spec generation trains v2 on it.
    new = _annotated(fm_obj(status={"latestVersion": "v1", "versions": v1}), "2026-12-03")
    plan = planner.plan(new, [done1], NOW, image=IMAGE)
    assert plan.create is not None and re.fullmatch(r"movielens-v2-g1-d[0-9a-f]{6}", plan.create["metadata"]["name"])
    assert plan.create["metadata"]["labels"]["fmops.dev/data-revision"] == "2026-12-03"
    assert "data revision 2026-12-03" in plan.verdict.message
    done2 = finished(plan.create, "Succeeded", {"NDCG@10": 0.1})
    versions = planner.plan(new, [done1, done2], NOW, image=IMAGE).verdict.extra["versions"]
    assert [(v["version"], v.get("dataRevision")) for v in versions] == [("v1", None), ("v2", "2026-12-03")]
    again = planner.plan(_annotated(fm_obj(status={"latestVersion": "v2", "versions": versions}), "2026-12-03"),
                         [done1, done2], NOW, image=IMAGE)
    assert again.create is None, "the same data revision trains once"


def test_a_data_revision_that_is_no_label_value_is_hashed_and_supersedes_the_running_workflow() -> None:
    wf1 = planner.plan(fm_obj(), [], NOW, image=IMAGE).create
    assert wf1 is not None
    plan = planner.plan(_annotated(fm_obj(), "s3://events/dt=2026-12-03/"), [finished(wf1, "Running")], NOW, image=IMAGE)
    assert plan.create is not None and plan.delete == ("movielens-v1-g1",)
    assert plan.create["metadata"]["name"] != "movielens-v1-g1", "the new Workflow must not collide with the one being deleted"
    label = plan.create["metadata"]["labels"]["fmops.dev/data-revision"]
    assert label.startswith("h-") and len(label) == 18


def _trained_v1(ndcg: float) -> dict[str, Any]:
    return {"latestVersion": "v1", "versions": [{"version": "v1", "artifactUri": "pvc://fmop-models/x", "specGeneration": 1,
                                                 "workflow": "movielens-v1-g1", "metrics": {"NDCG@10": ndcg}}]}


@pytest.mark.parametrize(("ndcg", "tolerance", "latest", "gate_reason"), [
    pytest.param(0.105, None, "v2", "Passed", id="better"),
    pytest.param(0.099, None, "v2", "Passed", id="1pct-worse-within-2pct"),
    pytest.param(0.095, None, "v1", "NDCGRegressed", id="5pct-worse-held-back"),
    pytest.param(0.095, 0.1, "v2", "Passed", id="5pct-worse-within-custom-10pct"),
])
def test_quality_gate(ndcg: float, tolerance: float | None, latest: str, gate_reason: str) -> None:
    spec = {"qualityGate": {"ndcgTolerance": tolerance}} if tolerance is not None else {}
    obj = fm_obj(generation=2, status=_trained_v1(0.1), **spec)
    wf = planner.plan(obj, [], NOW, image=IMAGE).create
    assert wf is not None and wf["metadata"]["labels"][LABEL_VERSION] == "v2"
    plan = planner.plan(obj, [finished(wf, "Succeeded", {"NDCG@10": ndcg})], NOW, image=IMAGE)
    assert plan.verdict.extra["latestVersion"] == latest
    assert [v["version"] for v in plan.verdict.extra["versions"]] == ["v1", "v2"]
    c = cond(plan.verdict.conditions, "QualityGate")
    assert c.reason == gate_reason
    if gate_reason == "NDCGRegressed":
        assert "-5.0%" in c.message and "latestVersion stays v1" in c.message
        assert plan.verdict.extra["versions"][-1]["gate"] == "HeldBack"


def test_gate_without_a_previous_metric_passes() -> None:
    assert gate({"NDCG@10": 0.1}, None, 0.02)[0]


def test_version_history_limit_prunes_versions_and_their_workflows() -> None:
    versions = [{"version": f"v{i}", "artifactUri": "pvc://fmop-models/x", "specGeneration": i, "workflow": f"movielens-v{i}-g{i}",
                 "metrics": {"NDCG@10": 0.1}} for i in (1, 2)]
    obj = fm_obj(generation=3, status={"latestVersion": "v2", "versions": versions}, versionHistoryLimit=2)
    wf = planner.plan(obj, [], NOW, image=IMAGE).create
    assert wf is not None
    old = [{"metadata": {"name": f"movielens-v{i}-g{i}", "labels": {LABEL_VERSION: f"v{i}", LABEL_GENERATION: str(i)}},
            "status": {"phase": "Succeeded"}} for i in (1, 2)]
    plan = planner.plan(obj, [*old, finished(wf, "Succeeded", {"NDCG@10": 0.11})], NOW, image=IMAGE)
    assert [v["version"] for v in plan.verdict.extra["versions"]] == ["v2", "v3"]
    assert plan.delete == ("movielens-v1-g1",)


def test_a_version_another_writer_took_meanwhile_is_recorded_under_the_next_free_key() -> None:
    """status.versions is keyed by version: v2 planned, but a person recorded a v2 of their own meanwhile."""
    wf = planner.plan(fm_obj(), [], NOW, image=IMAGE).create
    assert wf is not None and wf["metadata"]["labels"][LABEL_VERSION] == "v1"
    theirs = {"version": "v1", "artifactUri": "s3://elsewhere/v1/"}
    plan = planner.plan(fm_obj(status={"latestVersion": "v1", "versions": [theirs]}), [finished(wf, "Succeeded", {"NDCG@10": 0.1})],
                        NOW, image=IMAGE)
    versions = plan.verdict.extra["versions"]
    assert [v["version"] for v in versions] == ["v1", "v2"] and versions[0] == theirs
    assert versions[1]["workflow"] == wf["metadata"]["name"] and versions[1]["artifactUri"].endswith("/v1/triton")
    assert plan.verdict.extra["latestVersion"] == "v2" and "trained v2 in Workflow" in plan.verdict.message


# ---------------------------------------------------------------- TaskAdapter bookkeeping
def fm_with(*versions: str) -> dict[str, Any]:
    return fm_obj(status={"latestVersion": versions[-1], "versions": [
        {"version": v, "artifactUri": f"pvc://fmop-models/ns/foundationmodels/movielens/{v}/triton",
         "checkpointUri": f"pvc://fmop-models/ns/foundationmodels/movielens/{v}/checkpoint"} for v in versions]})


def test_adapter_waits_for_a_foundation_model_version() -> None:
    plan = planner.plan(ta_obj(), [], NOW, image=IMAGE, foundation_model=fm_obj())
    assert plan.create is None and plan.verdict.phase == "Pending"


def test_adapter_fine_tunes_on_the_latest_version_and_retrains_on_a_new_one() -> None:
    plan = planner.plan(ta_obj(), [], NOW, image=IMAGE, foundation_model=fm_with("v1"))
    wf = plan.create
    assert wf is not None and wf["metadata"]["labels"][LABEL_BASE] == "v1"
    assert params(wf)["base-checkpoint"] == "ns/foundationmodels/movielens/v1/checkpoint"
    result = {"fm_plus_adapter": {"HR@10": 0.3, "NDCG@10": 0.15}, "frozen_fm": {"HR@10": 0.2, "NDCG@10": 0.1},
              "adapter_params": 2000, "users": 40}
    done = finished(wf, "Succeeded", result)
    plan = planner.plan(ta_obj(), [done], NOW, image=IMAGE, foundation_model=fm_with("v1"))
    assert plan.verdict.phase == "Ready" and plan.verdict.extra["latestVersion"] == "v1"
    [v] = plan.verdict.extra["versions"]
    assert v["foundationModelVersion"] == "v1" and v["metrics"]["NDCG@10"] == 0.15 and v["metrics"]["frozen NDCG@10"] == 0.1
    # FollowLatest: the FoundationModel gets v2, the adapter trains again on it
    stored = ta_obj(status={"latestVersion": "v1", "versions": plan.verdict.extra["versions"]})
    again = planner.plan(stored, [done], NOW, image=IMAGE, foundation_model=fm_with("v1", "v2"))
    assert again.create is not None and again.create["metadata"]["labels"][LABEL_BASE] == "v2"
    assert again.create["metadata"]["labels"][LABEL_VERSION] == "v2" and again.delete == ()


def test_production_example_renders_for_8_gpus() -> None:
    obj = load_example("production/foundationmodel.yaml")
    obj["metadata"].update(namespace="recsys", uid="u", generation=1)
    plan = planner.plan(obj, [], NOW, image=IMAGE)
    assert plan.create is not None, plan.verdict.message
    p = params(plan.create)
    assert (p["nproc-per-node"], p["data"], p["version-dir"]) == ("8", "parquet:s3://recsys-events/interactions/2026/",
                                                                  "recsys/foundation/events-fm/v1")
    assert plan.create["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}


# ---------------------------------------------------------------- the four cases, both kinds
def _planned(kind: str, workflows: list[dict[str, Any]], status: dict[str, Any] | None = None) -> planner.Plan:
    if kind == "FoundationModel":
        return planner.plan(fm_obj(status=status), workflows, NOW, image=IMAGE)
    return planner.plan(ta_obj(status=status), workflows, NOW, image=IMAGE, foundation_model=fm_with("v1"))


def _failed(wf: dict[str, Any]) -> dict[str, Any]:
    bad = finished(wf, "Failed")
    bad["status"]["nodes"]["pod-1"] = {"id": "pod-1", "type": "Pod", "displayName": "train", "phase": "Failed",
                                       "message": "Error (exit code 2)", "finishedAt": NOW}
    return bad


TRAINED = {"FoundationModel": {"latestVersion": "v1", "versions": [{"version": "v1", "artifactUri": "pvc://fmop-models/x", "specGeneration": 1,
                                                                   "workflow": "movielens-v1-g1"}]},
           "TaskAdapter": {"latestVersion": "v1", "versions": [{"version": "v1", "foundationModelVersion": "v1", "artifactUri": "pvc://fmop-models/y",
                                                               "specGeneration": 1, "workflow": "west-coast-v1-g1"}]}}
# What each case finds of the Workflow the kind's first plan submits.
FOUND: dict[str, Any] = {"none": lambda wf: [], "trained": lambda wf: [], "running": lambda wf: [finished(wf, "Running")],
                         "failed": lambda wf: [_failed(wf)], "succeeded": lambda wf: [finished(wf, "Succeeded", {"NDCG@10": 0.1})]}


@pytest.mark.parametrize(("kind", "case", "phase", "reason", "says"), [
    pytest.param("FoundationModel", "none", "Training", "WorkflowSubmitted", "training v1 (spec generation 1) in Workflow movielens-v1-g1",
                 id="fm-no-workflow-submits"),
    pytest.param("TaskAdapter", "none", "Training", "WorkflowSubmitted", "fine-tuning v1 on movielens v1 in Workflow west-coast-v1-g1",
                 id="ta-no-workflow-submits"),
    pytest.param("FoundationModel", "trained", "Ready", None, "latest version v1", id="fm-no-workflow-trained-already"),
    pytest.param("TaskAdapter", "trained", "Ready", None, "adapter v1 on v1", id="ta-no-workflow-trained-already"),
    pytest.param("FoundationModel", "running", "Training", "WorkflowRunning", "training v1 in Workflow movielens-v1-g1: Running, 1/4 steps",
                 id="fm-running"),
    pytest.param("TaskAdapter", "running", "Training", "WorkflowRunning", "fine-tuning v1 in Workflow west-coast-v1-g1: Running, 1/4 steps",
                 id="ta-running"),
    pytest.param("FoundationModel", "failed", "Failed", "WorkflowFailed",
                 "training v1 failed in Workflow movielens-v1-g1: step train failed: Error (exit code 2)", id="fm-failed"),
    pytest.param("TaskAdapter", "failed", "Failed", "WorkflowFailed",
                 "fine-tuning v1 failed in Workflow west-coast-v1-g1: step train failed: Error (exit code 2)", id="ta-failed"),
    pytest.param("FoundationModel", "succeeded", "Ready", "Succeeded", "trained v1 in Workflow movielens-v1-g1; latest version v1",
                 id="fm-succeeded-records-v1"),
    pytest.param("TaskAdapter", "succeeded", "Ready", "Succeeded", "fine-tuned v1 on movielens v1 in Workflow west-coast-v1-g1",
                 id="ta-succeeded-records-v1"),
])
def test_the_four_cases_of_the_training_workflow(kind: str, case: str, phase: str, reason: str | None, says: str) -> None:
    submitted = _planned(kind, []).create
    assert submitted is not None
    p = _planned(kind, FOUND[case](submitted), TRAINED[kind] if case == "trained" else None)
    training = next((c for c in p.verdict.conditions if c.type == "Training"), None)
    assert (p.verdict.phase, training and training.reason, p.verdict.message) == (phase, reason, says)
    assert cond(p.verdict.conditions, "Ready").status == ("True" if case in ("trained", "succeeded") else "False")
    assert (p.create is not None) == (case == "none") and p.delete == ()
    assert p.read_log == (StepLog(submitted["metadata"]["name"], "pod-1") if case == "failed" else None)
    if case == "succeeded":
        assert [v["version"] for v in p.verdict.extra["versions"]] == ["v1"] and p.verdict.extra["latestVersion"] == "v1"
    if kind == "TaskAdapter":
        assert p.verdict.extra["baseVersion"] == "v1"


@pytest.mark.parametrize(("tail", "expected"), [
    pytest.param("", "step train failed: Error (exit code 2)", id="empty-tail-leaves-the-message"),
    pytest.param("Traceback\nValueError: bad slice\n", "Error (exit code 2); log tail: Traceback\nValueError: bad slice", id="tail-appended"),
    pytest.param("x" * 5000, "; log tail: " + "x" * 600, id="long-tail-cut-to-its-end"),
])
def test_with_log_merges_the_tail_into_the_message_and_condition(tail: str, expected: str) -> None:
    wf = _planned("FoundationModel", []).create
    assert wf is not None
    p = planner.with_log(_planned("FoundationModel", [_failed(wf)]), tail)
    assert p.verdict.message.endswith(expected) and cond(p.verdict.conditions, "Training").message == p.verdict.message
    assert p.read_log is None and p.verdict.phase == "Failed"


def test_with_log_changes_nothing_when_the_plan_asks_for_no_log() -> None:
    p = _planned("FoundationModel", [])
    assert p.read_log is None and planner.with_log(p, "some log") == p


def test_the_planner_plans_only_its_two_kinds() -> None:
    with pytest.raises(ValueError, match="not 'Rollout'"):
        planner.plan(load_example("rollout.yaml"), [], NOW, image=IMAGE)


# ---------------------------------------------------------------- kstatus: Reconciling and Stalled, case by case
def kstatus(p: planner.Plan) -> tuple[tuple[str, str], tuple[str, str]]:
    """(Reconciling, Stalled) of a plan as (status, reason), each there once."""
    types = [c.type for c in p.verdict.conditions]
    assert types.count("Reconciling") == 1 and types.count("Stalled") == 1, types
    r, s = cond(p.verdict.conditions, "Reconciling"), cond(p.verdict.conditions, "Stalled")
    return (r.status, r.reason), (s.status, s.reason)


WORKING = ("False", "NotStalled")
DONE = (("False", "Reconciled"), ("False", "NotStalled"))


@pytest.mark.parametrize(("kind", "case", "expected"), [
    pytest.param("FoundationModel", "none", (("True", "WorkflowSubmitted"), WORKING), id="fm-submitted-reconciles"),
    pytest.param("TaskAdapter", "none", (("True", "WorkflowSubmitted"), WORKING), id="ta-submitted-reconciles"),
    pytest.param("FoundationModel", "running", (("True", "WorkflowRunning"), WORKING), id="fm-running-reconciles"),
    pytest.param("TaskAdapter", "running", (("True", "WorkflowRunning"), WORKING), id="ta-running-reconciles"),
    pytest.param("FoundationModel", "failed", (("False", "WorkflowFailed"), ("True", "WorkflowFailed")), id="fm-failed-stalls"),
    pytest.param("TaskAdapter", "failed", (("False", "WorkflowFailed"), ("True", "WorkflowFailed")), id="ta-failed-stalls"),
    pytest.param("FoundationModel", "succeeded", DONE, id="fm-succeeded-is-done"),
    pytest.param("TaskAdapter", "succeeded", DONE, id="ta-succeeded-is-done"),
    pytest.param("FoundationModel", "trained", DONE, id="fm-trained-already-is-done"),
    pytest.param("TaskAdapter", "trained", DONE, id="ta-trained-already-is-done"),
])
def test_kstatus_of_the_four_cases(kind: str, case: str, expected: Any) -> None:
    submitted = _planned(kind, []).create
    assert submitted is not None
    p = _planned(kind, FOUND[case](submitted), TRAINED[kind] if case == "trained" else None)
    assert kstatus(p) == expected
    ready = cond(p.verdict.conditions, "Ready")
    assert ready.status == ("True" if case in ("trained", "succeeded") else "False"), "Ready is as before"
    if expected[0][0] == "True":
        assert cond(p.verdict.conditions, "Reconciling").message == p.verdict.message
    types = [c.type for c in p.verdict.conditions]
    assert types.index("Reconciling") == types.index("Ready") + 1 and types.index("Stalled") == types.index("Ready") + 2


def test_a_failed_workflow_stalls_with_the_step_and_its_log_tail_and_is_not_retried() -> None:
    wf = _planned("FoundationModel", []).create
    assert wf is not None
    asked = _planned("FoundationModel", [_failed(wf)])
    assert asked.create is None, "a failed Workflow is retried only when someone deletes it"
    p = planner.with_log(asked, "Traceback\nValueError: bad slice\n")
    stalled = cond(p.verdict.conditions, "Stalled")
    assert stalled.status == "True" and stalled.message == p.verdict.message
    assert stalled.message.endswith("step train failed: Error (exit code 2); log tail: Traceback\nValueError: bad slice")
    # a log too long for status.message is cut as status.message is
    long = planner.with_log(asked, "x" * 5000)
    assert cond(long.verdict.conditions, "Stalled").message == long.verdict.message


def test_a_workflow_that_cannot_be_rendered_stalls() -> None:
    fm = fm_with("v1")
    del fm["status"]["versions"][0]["checkpointUri"]  # recorded by hand: nothing to fine-tune from
    p = planner.plan(ta_obj(), [], NOW, image=IMAGE, foundation_model=fm)
    assert p.verdict.phase == "Failed" and kstatus(p) == (("False", "CannotRender"), ("True", "CannotRender"))
    assert "has no checkpointUri" in cond(p.verdict.conditions, "Stalled").message


def test_an_invalid_spec_stalls_and_trains_nothing() -> None:
    obj = fm_obj()
    obj["spec"]["architecture"]["eventFields"] = ["item", "device"]
    p = planner.plan(obj, [], NOW, image=IMAGE)
    assert p.create is None and kstatus(p) == (("False", "InvalidSpec"), ("True", "InvalidSpec"))


@pytest.mark.parametrize(("kind", "status", "expected"), [
    pytest.param("FoundationModel", None, (("False", "NoTrainerImage"), ("True", "NoTrainerImage")), id="fm-no-version-stalls"),
    pytest.param("TaskAdapter", None, (("False", "NoTrainerImage"), ("True", "NoTrainerImage")), id="ta-no-version-stalls"),
    pytest.param("FoundationModel", TRAINED["FoundationModel"], DONE, id="fm-with-a-version-is-done"),
    pytest.param("TaskAdapter", TRAINED["TaskAdapter"], DONE, id="ta-with-a-version-is-done"),
])
def test_without_a_trainer_image_only_an_object_with_no_version_stalls(kind: str, status: dict[str, Any] | None, expected: Any) -> None:
    if kind == "FoundationModel":
        p = planner.plan(fm_obj(status=status), [], NOW, image="")
    else:
        p = planner.plan(ta_obj(status=status), [], NOW, image="", foundation_model=fm_with("v1"))
    assert p.create is None and kstatus(p) == expected
    if expected[1][0] == "True":
        assert cond(p.verdict.conditions, "Stalled").message == cond(p.verdict.conditions, "Training").message


@pytest.mark.parametrize(("foundation_model", "expected"), [
    pytest.param(None, (("False", "FoundationModelNotFound"), ("True", "FoundationModelNotFound")), id="fm-missing-stalls"),
    pytest.param(fm_obj(status={"observedGeneration": 1, "phase": "Training", "conditions": [
        {"type": "Reconciling", "status": "True", "reason": "WorkflowRunning"}, {"type": "Stalled", "status": "False", "reason": "NotStalled"}]}),
        (("True", "FoundationModelNotReady"), WORKING), id="fm-training-reconciles"),
    pytest.param(fm_obj(status={"observedGeneration": 1, "phase": "Failed", "conditions": [
        {"type": "Reconciling", "status": "False", "reason": "WorkflowFailed"},
        {"type": "Stalled", "status": "True", "reason": "WorkflowFailed", "message": "training v1 failed"}]}),
        (("False", "FoundationModelStalled"), ("True", "FoundationModelStalled")), id="fm-failed-stalls"),
])
def test_an_adapter_waiting_on_its_foundation_model(foundation_model: dict[str, Any] | None, expected: Any) -> None:
    p = planner.plan(ta_obj(), [], NOW, image=IMAGE, foundation_model=foundation_model)
    assert p.create is None and kstatus(p) == expected


def test_a_version_the_quality_gate_held_back_stalls_until_a_person_acts() -> None:
    """The held-back version is recorded and the latest still serves (Ready True), but this spec gave nothing servable:
    Stalled, the same while its Workflow is listed and once it is gone."""
    obj = fm_obj(generation=2, status=_trained_v1(0.1))
    wf = planner.plan(obj, [], NOW, image=IMAGE).create
    assert wf is not None
    done = finished(wf, "Succeeded", {"NDCG@10": 0.05})
    recorded = planner.plan(obj, [done], NOW, image=IMAGE)
    assert cond(recorded.verdict.conditions, "QualityGate").reason == "NDCGRegressed"
    assert cond(recorded.verdict.conditions, "Ready").status == "True"
    assert kstatus(recorded) == (("False", "VersionHeldBack"), ("True", "VersionHeldBack"))
    assert "v2, trained for this spec, held back by the quality gate" in cond(recorded.verdict.conditions, "Stalled").message
    stored = fm_obj(generation=2, status={"latestVersion": recorded.verdict.extra["latestVersion"], "versions": recorded.verdict.extra["versions"]})
    for found in ([done], []):
        again = planner.plan(stored, found, NOW, image=IMAGE)
        assert again.create is None
        assert [c for c in again.verdict.conditions if c.type in ("Reconciling", "Stalled")] == \
               [c for c in recorded.verdict.conditions if c.type in ("Reconciling", "Stalled")]
    # the next spec trains again: Reconciling, no longer Stalled
    nxt = planner.plan(fm_obj(generation=3, status=stored["status"]), [done], NOW, image=IMAGE)
    assert nxt.create is not None and kstatus(nxt) == (("True", "WorkflowSubmitted"), WORKING)
