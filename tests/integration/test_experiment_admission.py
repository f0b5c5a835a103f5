"""The real API server admits a Rollout with an experiment step on a provider that routes by header, and refuses one
on kserve, or on traefik without traefik.ingressRoute, with the CRD's message naming the field and the fix
(control plane only, no node)."""

from __future__ import annotations

from typing import Any

import json

import pytest
import yaml

from tests.conftest import load_example

EXPERIMENT = {"candidatePercent": 20, "success": "played", "minimumEffect": 0.01, "maxDuration": "2h", "maxExposures": 100000,
              "interval": "1m", "onNoDecision": "pause"}


def _rollout(routing: dict[str, Any], step: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = load_example("rollout.yaml")
    obj["metadata"] = {"name": "experiment", "namespace": "default"}
    obj["spec"]["trafficRouting"] = routing
    obj["spec"]["strategy"].pop("shadow", None)
    obj["spec"]["strategy"]["steps"] = [{"setWeight": 5}, step or {"experiment": EXPERIMENT}, {"setWeight": 100}]
    return obj


def _apply(control_plane: Any, obj: dict[str, Any]) -> Any:
    return control_plane.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=yaml.safe_dump(obj), check=False)


@pytest.mark.parametrize("routing", [
    pytest.param({"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gateway"}]}}, id="gatewayAPI"),
    pytest.param({"provider": "istio", "istio": {"hosts": ["reco"]}}, id="istio"),
    pytest.param({"provider": "traefik", "traefik": {"ingressRoute": {"match": "PathPrefix(`/`)"}}}, id="traefik-ingressRoute"),
])
def test_an_experiment_step_is_admitted_with_a_provider_that_routes_by_header(control_plane: Any, routing: dict[str, Any]) -> None:
    ok = _apply(control_plane, _rollout(routing, {"experiment": {"candidatePercent": 20}}))
    assert ok.returncode == 0, ok.stderr
    step = json.loads(ok.stdout)["spec"]["strategy"]["steps"][1]["experiment"]
    assert step == {"candidatePercent": 20, "success": "played", "alpha": 0.05, "minimumEffect": 0.01, "minExposures": 100,
                    "maxDuration": "1h", "interval": "30s", "onNoDecision": "pause", "sampleRatioAlpha": 0.001}


@pytest.mark.parametrize(("routing", "field", "says"), [
    pytest.param({"provider": "kserve"}, "spec.trafficRouting.provider",
                 "strategy.steps[].experiment needs routing by header, which trafficRouting.provider kserve cannot do", id="kserve"),
    pytest.param({"provider": "traefik", "traefik": {}}, "spec.trafficRouting",
                 "strategy.steps[].experiment with trafficRouting.provider traefik needs trafficRouting.traefik.ingressRoute",
                 id="traefik-without-ingressRoute"),
])
def test_an_experiment_step_is_refused_where_the_provider_cannot_route_by_header(control_plane: Any, routing: dict[str, Any],
                                                                                 field: str, says: str) -> None:
    bad = _apply(control_plane, _rollout(routing))
    assert bad.returncode != 0 and field in bad.stderr and says in bad.stderr, bad.stderr


@pytest.mark.parametrize(("step", "says"), [
    pytest.param({"experiment": EXPERIMENT, "setWeight": 10}, "each step sets exactly one of setWeight, pause, analysis or experiment",
                 id="with-setWeight"),
    pytest.param({"experiment": {**EXPERIMENT, "maxExposures": 150}}, "must be at least twice experiment.minExposures", id="max-below-min"),
    pytest.param({"experiment": {**EXPERIMENT, "candidatePercent": 100}}, "candidatePercent", id="candidate-100"),
])
def test_a_bad_experiment_step_is_refused(control_plane: Any, step: dict[str, Any], says: str) -> None:
    bad = _apply(control_plane, _rollout({"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gateway"}]}}, step))
    assert bad.returncode != 0 and says in bad.stderr, bad.stderr
