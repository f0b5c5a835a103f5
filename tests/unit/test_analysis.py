"""Pure parts of analysis: the condition language, the verdict on one value, placeholder substitution,
PSI, the built-in checks' catalogue, and the local Prometheus' generated configuration."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fmop.api.rollout import BUILTIN_METRICS, Analysis, Metric, RolloutSpec
from fmdev.local import monitoring
from fmop.rollout import analysis, checks, naming
from fmop.rollout.controller import PrometheusAnalysis
from fmop.rollout.providers import RolloutRef
from fmop.rollout.types import Measure, SampleSplit, SplitUnknown
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


# ---------------------------------------------------------------- Prometheus addresses under the platform's control
class Answers:
    """A real HTTP server on 127.0.0.1 (a thread, no process) that answers every GET with one fixed answer, or the
    answer `body(path)` gives, and records the paths asked for: what stands at an address a Rollout names."""

    def __init__(self, status: int = 200,
                 body: bytes | Callable[[str], bytes] = b'{"status": "success", "data": {"resultType": "scalar", "result": [0, "0.5"]}}',
                 headers: dict[str, str] | None = None) -> None:
        import http.server
        import threading

        self.status, self.body, self.headers, self.paths = status, body, headers or {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.paths.append(self.path)
                body = outer.body(self.path) if callable(outer.body) else outer.body
                self.send_response(outer.status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **outer.headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Answers]]:
    made: list[Answers] = []

    def make(*args: Any, **kwargs: Any) -> Answers:
        made.append(Answers(*args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _analysed(address: str | None, metric: Metric | None = None) -> RolloutSpec:
    spec = RolloutSpec.model_validate(load_example("rollout.yaml")["spec"])
    return spec.model_copy(update={"analysis": Analysis(prometheusAddress=address, metrics=[metric or Metric(
        name="m", query='sum(up{namespace="{{namespace}}"})', successCondition="result < 1")])})


NOW = datetime(2026, 1, 1, tzinfo=UTC)
REF = RolloutRef(name="ro", namespace="team-a", uid="u")
MEASURE = Measure(("m",), 1, 2, "strategy.steps[1]")
SPLIT = SampleSplit(1, 2, NOW)


def test_an_address_the_platform_did_not_allow_gets_no_query(servers: Callable[..., Answers]) -> None:
    """Finding 3: spec.analysis.prometheusAddress reached any path the operator pod can reach."""
    default, elsewhere = servers(), servers()
    prom = PrometheusAnalysis(default.url)  # no --prometheus-allow: only the default
    address = f"{elsewhere.url}/any/path"
    (m,) = prom.measure(REF, _analysed(address), MEASURE, NOW)
    split = prom.split(REF, _analysed(address), SPLIT, NOW)
    assert elsewhere.paths == [] and default.paths == []
    assert m.phase == "Error" and m.address == address
    for message in (m.message, split.message):  # type: ignore[union-attr]
        assert f"spec.analysis.prometheusAddress {address} is not a Prometheus this operator may query" in message
        assert "no query was sent" in message and "prometheusAllowedUrls" in message and "--prometheus-allow" in message
    assert isinstance(split, SplitUnknown) and split.checkable  # not a pass: the step holds


def test_the_default_and_the_allowed_addresses_are_queried(servers: Callable[..., Answers]) -> None:
    default, other = servers(), servers()
    prom = PrometheusAnalysis(default.url, [other.url + "/"])
    for address, server in ((None, default), (default.url, default), (other.url, other)):
        (m,) = prom.measure(REF, _analysed(address), MEASURE, NOW)
        assert (m.phase, m.value) == ("Successful", 0.5), m
        assert server.paths[-1].startswith("/api/v1/query?query=sum%28up%7Bnamespace%3D%22team-a%22%7D%29")
    assert len(default.paths) == 2 and len(other.paths) == 1


@pytest.mark.parametrize(("address", "allowed"), [
    pytest.param("http://prometheus-operated.monitoring.svc:9090", True, id="the-default"),
    pytest.param("http://prometheus-operated.monitoring.svc:9090/", True, id="trailing-slash"),
    pytest.param("HTTP://Prometheus-Operated.Monitoring.svc:9090", True, id="scheme-and-host-any-case"),
    pytest.param("https://thanos.monitoring.svc:443/prometheus", True, id="default-port-written-out"),
    pytest.param("http://prometheus.team-a.svc:9090", True, id="the-rollouts-own-namespace"),
    pytest.param("http://prometheus.team-b.svc:9090", False, id="another-namespaces"),
    pytest.param("https://thanos.monitoring.svc/prometheus/api/v1/admin", False, id="a-path-below"),
    pytest.param("https://thanos.monitoring.svc", False, id="a-path-above"),
    pytest.param("http://thanos.monitoring.svc/prometheus", False, id="other-scheme"),
    pytest.param("http://prometheus-operated.monitoring.svc:9091", False, id="other-port"),
    pytest.param("http://127.0.0.1:8080/healthz", False, id="the-operators-loopback"),
    pytest.param("http://x@prometheus-operated.monitoring.svc:9090", False, id="user-info"),
    pytest.param("http://prometheus-operated.monitoring.svc:9090/#", False, id="fragment"),
    pytest.param("http://prometheus-operated.monitoring.svc:9090/?a=b", False, id="query-string"),
    pytest.param("file:///etc/passwd", False, id="file-scheme"),
])
def test_allow_list(address: str, allowed: bool) -> None:
    allow = analysis.AllowList("http://prometheus-operated.monitoring.svc:9090",
                               ("https://thanos.monitoring.svc/prometheus/", "http://prometheus.{namespace}.svc:9090"))
    refusal = allow.refusal(address, "team-a")
    assert (refusal is None) is allowed, refusal
    if refusal is not None:
        assert "spec.analysis.prometheusAddress" in refusal and "no query was sent" in refusal


def test_a_redirect_is_not_followed(servers: Callable[..., Answers]) -> None:
    elsewhere = servers()
    default = servers(302, b"", {"Location": f"{elsewhere.url}/secret"})
    (m,) = PrometheusAnalysis(default.url).measure(REF, _analysed(None), MEASURE, NOW)
    assert elsewhere.paths == []
    assert m.phase == "Error" and "answered HTTP 302, a redirect, which is not followed" in m.message and elsewhere.url not in m.message


def test_a_prometheus_shaped_error_is_quoted_bounded_and_only_in_prometheus_words(servers: Callable[..., Answers]) -> None:
    """Whatever answers can shape its body like Prometheus' error: the errorType must be one of Prometheus' words and
    the text is cut to 300 printable characters."""
    secret = "another-team's-page-7f3a"
    body = json.dumps({"status": "error", "errorType": secret, "error": "line one\nline two " + "x" * 400 + secret}).encode()
    for status in (200, 400):
        default = servers(status, body)
        (m,) = PrometheusAnalysis(default.url).measure(REF, _analysed(None), MEASURE, NOW)
        assert m.phase == "Error" and "an errorType that is not Prometheus'" in m.message, m.message
        assert secret not in m.message and "\n" not in m.message and "(442 characters)" in m.message
    real = servers(400, b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed left parenthesis"}')
    (m,) = PrometheusAnalysis(real.url).measure(REF, _analysed(None), MEASURE, NOW)
    assert f"Prometheus at {real.url} answered HTTP 400: bad_data: 1:5: parse error: unclosed left parenthesis" == m.message


def test_an_answer_too_big_for_one_number_is_not_read(servers: Callable[..., Answers]) -> None:
    one = b'{"metric": {"namespace": "team-b"}, "value": [0, "1"]}'
    big = servers(200, b'{"status": "success", "data": {"resultType": "vector", "result": [' + b", ".join([one] * 90_000) + b"]}}")
    (m,) = PrometheusAnalysis(big.url).measure(REF, _analysed(None), MEASURE, NOW)
    assert m.phase == "Error" and "with more than 4 MiB, which is not read" in m.message and "team-" not in m.message


# ---------------------------------------------------------------- templated PromQL keeps the Rollout's namespace
@pytest.mark.parametrize("value", ['team-a"} or vector(1) or up{x="', "team-a\\", "Team-A", "a b", ""])
def test_a_placeholder_value_that_could_leave_its_quotes_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes name"):
        analysis.substitute('sum(up{namespace="{{namespace}}"})', value, "ro-r2", "ro-r1")


def test_the_operators_queries_select_only_the_rollouts_namespace() -> None:
    """Every selector of every built-in check (and its sample guard) and of the observed split names the Rollout's own
    namespace, so a tenant naming a built-in check cannot read another namespace's series through it."""
    queries = [analysis.split_query("team-a", "ro-r2"), analysis.split_query("team-a", "ro-r2", 30)]
    for metric in checks.BUILTIN.values():
        assert metric.minSampleSize is not None
        queries += [analysis.substitute(q, "team-a", "ro-r2", "ro-r1") for q in (metric.query, metric.minSampleSize.query)]
    for query in queries:
        selectors = re.findall(r"[a-z_]+\{([^}]*)\}", query)
        assert selectors, query
        assert all(f'{naming.PROM_NAMESPACE_LABEL}="team-a"' in s.split(",") for s in selectors), query
