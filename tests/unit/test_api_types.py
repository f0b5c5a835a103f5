"""The pydantic types accept the examples and reject what the server would reject."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fmop.api import FoundationModel, Rollout, TaskAdapter
from tests.conftest import load_example

KIND = {"FoundationModel": FoundationModel, "TaskAdapter": TaskAdapter, "Rollout": Rollout}


@pytest.mark.parametrize("name", ["foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml", "rollout-experiment.yaml"])
def test_examples_parse(name: str) -> None:
    obj = load_example(name)
    parsed = KIND[obj["kind"]].model_validate(obj)
    assert parsed.metadata["name"] == obj["metadata"]["name"]


def test_unknown_field_is_an_error() -> None:
    obj: dict[str, Any] = load_example("rollout.yaml")
    obj["spec"]["strategy"]["stepz"] = []
    with pytest.raises(ValidationError, match="stepz"):
        Rollout.model_validate(obj)


@pytest.mark.parametrize("bad", ["5 minutes", "5", "m5", "-1s"])
def test_durations_are_go_style(bad: str) -> None:
    obj = load_example("rollout.yaml")
    obj["spec"]["strategy"]["steps"][3]["pause"]["duration"] = bad
    with pytest.raises(ValidationError, match="pause.duration"):
        Rollout.model_validate(obj)


@pytest.mark.parametrize("good", ["result < 0.01", "result>=1e-3", "result == 0", "result != -2.5"])
def test_analysis_conditions_accept_the_small_grammar(good: str) -> None:
    obj = load_example("rollout.yaml")
    obj["spec"]["analysis"]["metrics"][0]["successCondition"] = good
    Rollout.model_validate(obj)


def test_default_spec_sections() -> None:
    fm = FoundationModel.model_validate({"kind": "FoundationModel", "metadata": {"name": "m"}, "spec": {"data": {"source": "synthetic"}}})
    assert fm.spec.objectives[0].type == "nextItem"
    assert fm.spec.training.precision == "auto"
    assert fm.spec.resources.gpus == 0


def test_rollout_status_written_before_the_engine_still_parses() -> None:
    """Objects whose status the operator wrote before the engine existed (phase and conditions only) stay valid."""
    from fmop.api.rollout import RolloutStatus

    old = {"phase": "Pending", "observedGeneration": 1, "message": "waiting",
           "conditions": [{"type": "Ready", "status": "False", "reason": "NotServing", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    status = RolloutStatus.model_validate(old)
    assert status.stable is None and status.canary is None and status.handledAlerts == [] and status.heldSince is None
    assert RolloutStatus.model_validate({"phase": "Shadowing", "currentStepIndex": -1}).phase == "Shadowing"


def test_keep_warm_defaults_and_is_a_duration() -> None:
    obj = load_example("rollout.yaml")
    assert Rollout.model_validate(obj).spec.strategy.keepWarm == "10m"
    obj["spec"]["strategy"]["keepWarm"] = "ten minutes"
    with pytest.raises(ValidationError, match="strategy.keepWarm"):
        Rollout.model_validate(obj)


def _with_matchers(*matchers: dict[str, str]) -> dict[str, Any]:
    obj = load_example("rollout.yaml")
    obj["spec"]["rollback"]["alerts"]["matchers"] = list(matchers)
    return obj


@pytest.mark.parametrize("matcher", [
    pytest.param({"name": "alertname", "op": "=~", "value": "FmRollout.*"}, id="regex"),
    pytest.param({"name": "alertname", "op": "=~", "value": "(x+x+)+y"}, id="pathological-for-backtracking-but-fine-in-re2"),
    pytest.param({"name": "pod", "op": "!~", "value": r"\pL+-[0-9a-f]{5}"}, id="unicode-class-and-repeat"),
    pytest.param({"name": "job", "op": "=", "value": "("}, id="equality-takes-any-text"),
])
def test_matchers_accept_re2(matcher: dict[str, str]) -> None:
    Rollout.model_validate(_with_matchers({"name": "severity", "value": "critical"}, matcher))


@pytest.mark.parametrize(("matcher", "says"), [
    pytest.param({"name": "job", "op": "=~", "value": "("}, 'matcher job=~"(" is not a valid RE2 regular expression', id="unbalanced"),
    pytest.param({"name": "job", "op": "!~", "value": "(?!canary).*"}, "invalid perl operator: (?!", id="lookahead"),
    pytest.param({"name": "job", "op": "=~", "value": r"(a)\1"}, "invalid escape sequence", id="backreference"),
])
def test_matchers_refuse_what_re2_refuses_naming_the_matcher(matcher: dict[str, str], says: str) -> None:
    """The operator's own check (the Rollout controller validates every spec and fails an invalid one with a condition
    Accepted=False InvalidSpec carrying this message); the CRD's CEL rule refuses the same at admission."""
    with pytest.raises(ValidationError) as e:
        Rollout.model_validate(_with_matchers({"name": "severity", "value": "critical"}, matcher))
    (error,) = e.value.errors()
    assert error["loc"] == ("spec", "rollback", "alerts", "matchers", 1, "value")
    assert says in error["msg"] and "is not a valid RE2 regular expression" in error["msg"]


@pytest.mark.parametrize(("address", "says"), [
    pytest.param("http://127.0.0.1:8080/any/path#", "must not carry a fragment", id="fragment"),
    pytest.param("http://admin:secret@prometheus:9090", "must not carry user info", id="user-info"),
    pytest.param("http://prometheus:9090/api/v1/query?query=up", "must not carry a query string", id="query-string"),
    pytest.param("file:///etc/passwd", "must be an http:// or https:// URL", id="file-scheme"),
    pytest.param("gopher://prometheus:70/", "must be an http:// or https:// URL", id="gopher-scheme"),
    pytest.param("HTTP://prometheus:9090", "must be an http:// or https:// URL", id="upper-case-scheme"),
    pytest.param("http://prometheus:9090/a b", "must be a base URL", id="space"),
    pytest.param("http://prometheus\\.evil:9090", "must be a base URL", id="backslash"),
    pytest.param("http://", "must be a base URL", id="no-host"),
    pytest.param("http://prometheus:9090\n", "must be a base URL", id="newline"),
])
def test_prometheus_address_is_a_base_url_only(address: str, says: str) -> None:
    obj = load_example("rollout.yaml")
    obj["spec"]["analysis"]["prometheusAddress"] = address
    with pytest.raises(ValidationError, match="analysis.prometheusAddress") as err:
        Rollout.model_validate(obj)
    assert says in str(err.value)


@pytest.mark.parametrize("address", ["http://prometheus-operated.monitoring.svc:9090", "https://thanos.example.com/prometheus/",
                                     "http://10.0.0.7:9090", "http://[fd00::7]:9090", "http://prometheus"])
def test_prometheus_address_accepts_base_urls(address: str) -> None:
    obj = load_example("rollout.yaml")
    obj["spec"]["analysis"]["prometheusAddress"] = address
    assert Rollout.model_validate(obj).spec.analysis.prometheusAddress == address


def test_prometheus_address_rules_are_the_crds() -> None:
    """pydantic and the API server refuse the same addresses: the CRD carries the pattern and the CEL rules pydantic runs."""
    from fmop.api.rollout import PROMETHEUS_ADDRESS_PATTERN, Analysis

    field = Analysis.model_json_schema()["properties"]["prometheusAddress"]
    schema = next(s for s in field.get("anyOf", [field]) if s.get("type") == "string")
    assert schema["pattern"] == PROMETHEUS_ADDRESS_PATTERN
    rules = {r["rule"] for r in schema["x-kubernetes-validations"]}
    assert {"!self.contains('@')", "!self.contains('?')", "!self.contains('#')"} <= rules


def test_a_rollout_with_a_regex_re2_refuses_gets_a_condition_naming_the_matcher() -> None:
    """Where admission did not refuse it (CRDs older than the operator, a difference between Go's and RE2's syntax),
    the Rollout controller (the real one, against in-memory fakes) fails the spec with Accepted=False InvalidSpec,
    the message naming the matcher, and nothing is served."""
    from tests.unit.controller_world import Cluster

    c = Cluster()
    c.edit_spec(rollback__alerts__matchers=[{"name": "severity", "value": "critical"},
                                            {"name": "alertname", "op": "=~", "value": "(?=FmRollout)FmRollout.*"}])
    c.reconcile()
    accepted = next(x for x in c.status()["conditions"] if x["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert accepted["message"].startswith('spec.rollback.alerts.matchers.1.value: Value error, matcher alertname=~"(?=FmRollout)FmRollout.*" '
                                          "is not a valid RE2 regular expression"), accepted["message"]
    assert not any(w.startswith("apply") for w in c.kube.writes), c.kube.writes
