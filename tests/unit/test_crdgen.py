"""CRD generation: committed files match the pydantic types, and the output is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fmop import crdgen
from fmop.api import KINDS
from tests.conftest import REPO


def test_committed_crds_match_the_api_types(capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--root", str(REPO), "--check"]) == 0, capsys.readouterr().out


def test_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--root", str(tmp_path)]) == 0  # write a fresh copy
    target = tmp_path / "crds" / "fmops.dev_rollouts.yaml"
    target.write_text(target.read_text().replace("maxReplicas", "maxReplicaz", 1))
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr()
    assert "crds/fmops.dev_rollouts.yaml (committed)" in out.out
    assert "make crds" in out.err


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, sub in node.get("properties", {}).items():
            found += _walk(sub, f"{path}.{key}")
        if "items" in node:
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.info.kind)
def test_schema_is_structural(kind: Any) -> None:
    schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "const", "title", "$defs"} & node.keys(), path
        if not node.get("x-kubernetes-int-or-string"):
            assert "type" in node, f"{path} has no type"
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{path}: CEL rule {rule['rule']!r} has no message"
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(node["exclusiveMinimum"], bool):
            pytest.fail(f"{path}: numeric exclusiveMinimum is not OpenAPI v3.0")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.info.kind)
def test_kubectl_presentation(kind: Any) -> None:
    spec = crdgen.crd(kind)["spec"]
    assert spec["names"]["categories"] == ["fmops"]
    assert spec["names"]["shortNames"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and columns[-1] == "Age"


def test_rollout_columns_tell_the_rollout_story() -> None:
    from fmop.api import Rollout

    columns = {c["name"]: c["jsonPath"] for c in crdgen.crd(Rollout)["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Step"] == ".status.currentStepIndex"
    assert columns["Weight"] == ".status.canaryWeight"
    assert {"Stable", "Canary"} <= columns.keys()


def test_defaults_satisfy_their_own_rules() -> None:
    """The server checks defaults against CEL at CRD creation; pydantic must agree with itself."""
    from fmop.api.foundationmodel import Architecture, FoundationModelSpec

    arch = Architecture()
    assert arch.width % arch.heads == 0 and "item" in arch.eventFields
    doc = yaml.safe_load(crdgen.render(KINDS[0]))
    arch_default = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["architecture"]["default"]
    assert arch_default == arch.model_dump(mode="json", exclude_none=True)
    assert "objectives" in FoundationModelSpec.model_fields


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.info.kind)
def test_rendered_yaml_has_no_anchors(kind: Any) -> None:
    """A type used twice (e.g. ServeTarget in spec and status) must be written out twice: CRDs are read by people and by tools
    that do not resolve YAML aliases."""
    text = crdgen.render(kind)
    assert "&id0" not in text and "*id0" not in text
