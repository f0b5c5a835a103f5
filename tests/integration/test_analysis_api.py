"""The real API server lets a Rollout name the built-in checks without defining them, and still
rejects a name that is neither built in nor defined; it accepts a Prometheus base URL and nothing
more in spec.analysis.prometheusAddress (control plane only, no node)."""

from __future__ import annotations

from typing import Any

import pytest
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


@pytest.mark.parametrize("address", ["http://prometheus-operated.monitoring.svc:9090", "https://thanos.example.com/prometheus/",
                                     "http://10.0.0.7:9090", "http://[fd00::7]:9090"])
def test_a_prometheus_base_url_is_accepted(control_plane: Any, address: str) -> None:
    obj = _rollout(["error-rate"], [])
    obj["spec"]["analysis"]["prometheusAddress"] = address
    ok = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert ok.returncode == 0, ok.stderr


def test_the_address_of_the_finding_is_refused_naming_the_field(control_plane: Any) -> None:
    """`http://host/any/path#` made the operator fetch any path its pod can reach."""
    obj = _rollout(["error-rate"], [])
    obj["spec"]["analysis"]["prometheusAddress"] = "http://127.0.0.1:8080/any/path#"
    bad = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert bad.returncode != 0 and "spec.analysis.prometheusAddress" in bad.stderr and "must not carry a fragment" in bad.stderr
