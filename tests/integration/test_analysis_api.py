"""The real API server lets a Rollout name the built-in checks without defining them, and still
rejects a name that is neither built in nor defined (control plane only, no node)."""

from __future__ import annotations

from typing import Any

import yaml

from fmop.api.rollout import BUILTIN_METRICS
from tests.conftest import load_example


def _rollout(step_metrics: list[str], shadow_metrics: list[str]) -> dict[str, Any]:
    obj = load_example("rollout.yaml")
    obj["metadata"] = {"name": "builtins", "namespace": "default"}
    obj["spec"]["analysis"] = {"metrics": []}
    obj["spec"]["strategy"]["shadow"]["analysis"] = shadow_metrics
    obj["spec"]["strategy"]["steps"] = [{"setWeight": 10}, {"analysis": {"metrics": step_metrics}}, {"setWeight": 100}]
    return obj


def test_builtin_checks_need_no_definition(control_plane: Any) -> None:
    ok = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(_rollout(list(BUILTIN_METRICS), ["error-rate"])),
                               check=False)
    assert ok.returncode == 0, ok.stderr
    bad = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(_rollout(["error-rate", "nope"], [])), check=False)
    assert bad.returncode != 0 and "spec.strategy.steps" in bad.stderr and "not built in (error-rate, p99-latency, prediction-drift)" in bad.stderr
    bad = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(_rollout(["error-rate"], ["nope"])), check=False)
    assert bad.returncode != 0 and "spec.strategy.shadow.analysis" in bad.stderr
