"""Pure parts of analysis: the condition language, the verdict on one value, placeholder substitution,
PSI, the built-in checks' catalogue, and the local Prometheus' generated configuration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fmop.api.rollout import BUILTIN_METRICS, Analysis, Metric, RolloutSpec
from fmdev.local import monitoring
from fmop.rollout import analysis, checks, naming
from fmop.rollout.types import Measure
from tests.conftest import load_example
from tests.unit.rollout_world import make_spec, stable_world, with_model


@pytest.mark.parametrize(("condition", "value", "holds"), [
    pytest.param("result < 0.01", 0.004, True, id="lt-true"),
    pytest.param("result < 0.01", 0.01, False, id="lt-boundary"),
    pytest.param("result <= 0.01", 0.01, True, id="le-boundary"),
    pytest.param("result>1", 1.5, True, id="no-spaces"),
    pytest.param("result >= -2", -2.0, True, id="negative-threshold"),
    pytest.param("result == 1e3", 1000.0, True, id="exponent"),
    pytest.param("result != .5", 0.5, False, id="leading-dot"),
    pytest.param("  result > 3  ", 2.0, False, id="surrounding-space"),
])
def test_condition_language(condition: str, value: float, holds: bool) -> None:
    assert analysis.condition_holds(condition, value) is holds


@pytest.mark.parametrize("condition", ["result ~ 3", "value < 1", "result < abc", "result < 1; import os", "__import__('os')"])
def test_conditions_outside_the_language_are_refused(condition: str) -> None:
    with pytest.raises(ValueError, match="result <op> number"):
        analysis.condition_holds(condition, 1.0)


def _metric(success: str | None = None, failure: str | None = None) -> Metric:
    return Metric(name="m", query="q", successCondition=success, failureCondition=failure)


@pytest.mark.parametrize(("success", "failure", "value", "phase"), [
    pytest.param("result < 1", None, 0.5, "Successful", id="success-met"),
    pytest.param("result < 1", None, 2.0, "Failed", id="success-not-met"),
    pytest.param(None, "result > 1", 2.0, "Failed", id="failure-met"),
    pytest.param(None, "result > 1", 0.5, "Successful", id="failure-not-met"),
    pytest.param("result < 1", "result > 5", 3.0, "Failed", id="between-both-is-failed"),
    pytest.param("result < 10", "result > 5", 7.0, "Failed", id="both-met-failure-wins"),
])
def test_judge(success: str | None, failure: str | None, value: float, phase: str) -> None:
    got, message = analysis.judge(_metric(success, failure), value)
    assert got == phase and f"{value:g}" in message


def test_substitute_every_placeholder_with_optional_spaces() -> None:
    q = 'a{ns="{{namespace}}",c="{{ canary }}",s="{{stable}}"} / b{c="{{canary}}"}'
    assert analysis.substitute(q, "team-a", "ro-r2", "ro-r1") == 'a{ns="team-a",c="ro-r2",s="ro-r1"} / b{c="ro-r2"}'


def test_substitute_stable_without_a_stable_says_so() -> None:
    assert analysis.substitute('x{c="{{canary}}"}', "n", "ro-r1", None) == 'x{c="ro-r1"}'
    with pytest.raises(LookupError, match="no stable revision"):
        analysis.substitute('x{s="{{stable}}"}', "n", "ro-r1", None)


def test_psi() -> None:
    same = [0.1] * 10
    assert analysis.psi(same, same) == 0.0
    p, q = [0.5, 0.5], [0.9, 0.1]
    assert analysis.psi(p, q) == pytest.approx((0.5 - 0.9) * math.log(0.5 / 0.9) + (0.5 - 0.1) * math.log(0.5 / 0.1))
    assert math.isfinite(analysis.psi([1.0, 0.0], [0.0, 1.0]))  # floored, never infinite
    with pytest.raises(ValueError, match="same buckets"):
        analysis.psi([1.0], [0.5, 0.5])


def test_builtins_match_the_api_and_are_valid_metrics() -> None:
    assert tuple(checks.BUILTIN) == BUILTIN_METRICS
    for metric in checks.BUILTIN.values():
        Metric.model_validate(metric.model_dump())  # the API's own rules (conditions, failureLimit < count)
        assert "{{canary}}" in metric.query and "{{namespace}}" in metric.query
        assert metric.minSampleSize is not None, f"{metric.name}: a built-in without a sample guard would pass on no traffic"


def test_spec_metric_replaces_the_builtin_of_the_same_name() -> None:
    spec = RolloutSpec.model_validate(load_example("rollout.yaml")["spec"])
    mine = Metric(name="error-rate", query="sum(x)", successCondition="result < 0.5")
    spec = spec.model_copy(update={"analysis": Analysis(metrics=[mine])})
    assert checks.resolve(spec, "error-rate") is mine
    assert checks.resolve(spec, "prediction-drift") is checks.PREDICTION_DRIFT
    assert checks.resolve(spec, "nope") is None


def test_spec_may_name_builtins_without_defining_them() -> None:
    data = load_example("rollout.yaml")["spec"]
    data["analysis"] = {"metrics": []}
    data["strategy"]["shadow"]["analysis"] = ["error-rate"]
    data["strategy"]["steps"] = [{"setWeight": 10}, {"analysis": {"metrics": list(BUILTIN_METRICS)}}]
    RolloutSpec.model_validate(data)  # pydantic does not run CEL; the rule's text is checked below
    rules = RolloutSpec.model_json_schema()["x-kubernetes-validations"]
    assert sum("'prediction-drift'" in r["rule"] for r in rules) == 2


def test_predictor_scrape_config_relabels_to_the_naming_labels(tmp_path: Path) -> None:
    job = monitoring.predictor_scrape_config("https://10.0.0.1:6443", tmp_path / "ca.crt", tmp_path / "token")
    sd = job["kubernetes_sd_configs"][0]
    assert sd["role"] == "pod" and sd["authorization"]["credentials_file"] == str(tmp_path / "token")
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {naming.PROM_NAMESPACE_LABEL, naming.PROM_POD_LABEL, naming.PROM_ISVC_LABEL, naming.PROM_ROLLOUT_LABEL,
            naming.PROM_REVISION_LABEL, "__address__"} <= targets
    keep = job["relabel_configs"][0]
    assert keep["source_labels"] == ["__meta_kubernetes_pod_label_serving_kserve_io_inferenceservice"]


def test_prometheus_config_is_one_second_and_never_on_9090(tmp_path: Path) -> None:
    cfg = monitoring.prometheus_config({"traefik": ["127.0.0.1:9100"]}, [tmp_path / "rules.yml"], "127.0.0.1:9093")
    assert cfg["global"]["scrape_interval"] == cfg["global"]["evaluation_interval"] == "1s"
    assert cfg["scrape_configs"][0] == {"job_name": "traefik", "static_configs": [{"targets": ["127.0.0.1:9100"]}]}
    assert monitoring.Monitoring(tmp_path).prometheus_port != 9090


def test_alertmanager_config_posts_to_the_webhook_with_a_token_file(tmp_path: Path) -> None:
    cfg = monitoring.alertmanager_config("http://127.0.0.1:8081/alertmanager", tmp_path / "token")
    hook = cfg["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:8081/alertmanager"
    assert hook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": str(tmp_path / "token")}
    assert cfg["route"]["group_wait"] == cfg["route"]["group_interval"] == "1s"


def test_engine_measures_and_promotes_on_a_builtin_check() -> None:
    """A step naming prediction-drift with no definition in spec.analysis.metrics: measured, counted, promoted."""
    spec = make_spec(strategy={"steps": [{"setWeight": 10}, {"analysis": {"metrics": ["prediction-drift"]}}, {"setWeight": 100}]},
                     analysis={"metrics": []})
    w = stable_world(spec)
    w.spec = with_model(spec, "v2")
    measured: list[tuple[str, ...]] = []
    for _ in range(20):
        decision = w.tick(0.25)
        measured += [a.metrics for a in decision.actions if isinstance(a, Measure)]
        if w.status.phase == "Promoted":
            break
    assert w.status.phase == "Promoted", w.status.message
    assert measured.count(("prediction-drift",)) == checks.PREDICTION_DRIFT.count
