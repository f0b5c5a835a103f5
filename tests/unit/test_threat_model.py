"""Rows of README's threat model that the rest of the suite does not already cover: the identity and the image
a tenant's training runs with are the platform's choice, never the tenant's (issue 26)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fmop.api.foundationmodel import FoundationModel
from fmop.api.taskadapter import TaskAdapter
from fmop.training.render import Target, render_foundation_model, render_task_adapter
from tests.unit.test_training import IMAGE, fm_obj, ta_obj

REPO = Path(__file__).resolve().parents[2]


def _walk(node: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair anywhere in a YAML/JSON document."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((str(k), v))
            out += _walk(v)
    elif isinstance(node, list):
        for v in node:
            out += _walk(v)
    return out


def _rendered() -> list[dict[str, Any]]:
    fm = FoundationModel.model_validate(fm_obj())
    ta = TaskAdapter.model_validate(ta_obj())
    return [render_foundation_model(fm, Target("ns", "movielens", "u", 1, "v1"), IMAGE),
            render_task_adapter(ta, Target("ns", "ta", "u", 1, "v1"), "v1", "pvc://fmop-models/ns/fm/v1/checkpoint", IMAGE)]


@pytest.mark.parametrize("source", ["rendered", *sorted(p.name for p in (REPO / "workflows").glob("*.yaml"))])
def test_training_runs_as_the_namespaces_own_identity(source: str) -> None:
    """No serviceAccountName in the Workflows the operator submits nor in the WorkflowTemplates they run: training pods
    run as the tenant namespace's `default` ServiceAccount, with what that namespace grants, never as the operator."""
    docs = _rendered() if source == "rendered" else list(yaml.safe_load_all((REPO / "workflows" / source).read_text()))
    named = [v for doc in docs for k, v in _walk(doc) if k in ("serviceAccountName", "serviceAccount")]
    assert named == [], f"{source} names a service account: {named}"


def test_the_training_image_is_the_platforms() -> None:
    """The image is the operator's --trainer-image: the FoundationModel and TaskAdapter schemas have no image field a
    tenant could set, and every container of the templates runs the `image` parameter the operator fills in."""
    for model in (FoundationModel, TaskAdapter):
        fields = [k for k, _ in _walk(model.model_json_schema()) if k.lower() in ("image", "images", "imagename")]
        assert fields == [], f"{model.__name__} lets a tenant choose an image: {fields}"
    for wf in _rendered():
        params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
        assert params["image"] == IMAGE
    for path in sorted((REPO / "workflows").glob("*.yaml")):
        images = [v for doc in yaml.safe_load_all(path.read_text()) for k, v in _walk(doc) if k == "image" and isinstance(v, str)]
        assert images and all(v == "{{workflow.parameters.image}}" for v in images), f"{path.name}: {images}"
