"""Analysis against a real Prometheus (Debian's) scraping a real exporter in this process, every second.

The exporter (prometheus_client) publishes series shaped like the relabelled predictor metrics
(namespace, inferenceservice labels), with values each test sets; the test waits until Prometheus
has scraped them, then measures through fmop.rollout.analysis exactly as the operator does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from fmop.api.rollout import Analysis, Metric, MinSampleSize, RolloutSpec
from fmdev.local.common import Supervisor, free_port
from fmdev.local.monitoring import Monitoring
from fmop.rollout import analysis, naming
from fmop.rollout.sequential import Arm
from fmop.rollout.types import ExperimentCounts, ExperimentUnknown, Measure, Measurement, SplitSample
from tests.conftest import load_example
from tests.integration.prom import wait_scraped

NS, ROLLOUT = "team-a", "ro"
CANARY, STABLE = naming.isvc_name(ROLLOUT, 2), naming.isvc_name(ROLLOUT, 1)


class Exporter:
    """Triton-shaped series for a stable and a canary revision, served on a free port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["namespace", "inferenceservice", "model"]
        # Gauges, not Counters: prometheus_client would name a counter `..._total`, Triton does not.
        self.success = Gauge("nv_inference_request_success", "ok", labels, registry=self.registry)
        self.failure = Gauge("nv_inference_request_failure", "failed", labels, registry=self.registry)
        self.p99 = Gauge("nv_inference_request_summary_us", "latency", [*labels, "quantile"], registry=self.registry)
        self.items = Gauge("fmrec_recommended_items_total", "items", ["namespace", "inferenceservice", "task", "decile"], registry=self.registry)
        self.gauge = Gauge("test_value", "a value the test sets", ["namespace", "inferenceservice", "series"], registry=self.registry)
        # The served model's experiment counters (fmrec.serving.metrics), present at 0 from the start as the model makes them.
        self.exposures = Gauge("fmrec_experiment_requests_total", "exposures", ["namespace", "inferenceservice", "model"], registry=self.registry)
        self.outcomes = Gauge("fmrec_experiment_outcomes_total", "outcomes", ["namespace", "inferenceservice", "model", "outcome"],
                              registry=self.registry)
        for isvc in (CANARY, STABLE):
            self.exposures.labels(NS, isvc, "fmrec")
            for outcome in ("played", "ignored"):
                self.outcomes.labels(NS, isvc, "fmrec", outcome)
        for isvc in (CANARY, STABLE):
            for model in ("fmrec", "fmrec_outcome"):  # the recommend model and its outcome model, as exported
                self.success.labels(NS, isvc, model)
                self.failure.labels(NS, isvc, model)
            for d in range(1, 11):
                self.items.labels(NS, isvc, "fm", str(d))
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    yield e
    e.server.shutdown()
    e.server.server_close()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    workdir = tmp_path_factory.mktemp("prom")
    sup = Supervisor(workdir)
    # With the chart's rules: Prometheus refuses to start on a rule file it cannot load.
    mon = Monitoring(workdir, static={"exporter": [f"127.0.0.1:{exporter.port}"]}, alertmanager=False)
    try:
        mon.start(sup)
        yield mon
    finally:
        sup.stop_all()


def spec_with(*metrics: Metric, address: str | None = None) -> RolloutSpec:
    spec = RolloutSpec.model_validate(load_example("rollout.yaml")["spec"])
    return spec.model_copy(update={"analysis": Analysis(prometheusAddress=address, metrics=list(metrics))})


def measure_one(mon: Monitoring, *metrics: Metric, names: tuple[str, ...] | None = None, stable: int | None = 1,
                address: str | None = None) -> list[Measurement]:
    action = Measure(names or tuple(m.name for m in metrics), stable, 2, "strategy.steps[1]")
    return list(analysis.measure(action, spec_with(*metrics, address=address), NS, ROLLOUT, mon.prometheus_url, datetime.now(UTC)))


def gauge_metric(name: str, query: str, **kw: Any) -> Metric:
    return Metric(name=name, query=query, **kw)


def test_success_and_failure_judged_by_the_conditions(prometheus: Monitoring, exporter: Exporter) -> None:
    exporter.gauge.labels(NS, CANARY, "a").set(0.004)
    wait_scraped(prometheus, f'test_value{{inferenceservice="{CANARY}"}}', 0.004)
    query = 'sum(test_value{namespace="{{namespace}}",inferenceservice="{{canary}}"})'
    ok, bad, both = measure_one(prometheus, gauge_metric("ok", query, successCondition="result < 0.01"),
                                gauge_metric("bad", query, successCondition="result < 0.001"),
                                gauge_metric("both", query, successCondition="result < 1", failureCondition="result >= 0.004"))
    assert (ok.phase, ok.value, ok.address) == ("Successful", 0.004, prometheus.prometheus_url)
    assert ok.query == f'sum(test_value{{namespace="{NS}",inferenceservice="{CANARY}"}})'  # substituted
    assert bad.phase == "Failed" and "successCondition result < 0.001" in bad.message
    assert both.phase == "Failed" and "failureCondition" in both.message


def test_empty_vector_is_inconclusive_naming_the_query(prometheus: Monitoring) -> None:
    query = 'sum(no_such_metric{inferenceservice="{{canary}}"})'
    (m,) = measure_one(prometheus, gauge_metric("missing", query, successCondition="result < 1"))
    assert m.phase == "Inconclusive"
    assert m.query == f'sum(no_such_metric{{inferenceservice="{CANARY}"}})'
    assert "empty vector" in m.message and m.value is None


def test_nan_and_several_series_are_inconclusive(prometheus: Monitoring, exporter: Exporter) -> None:
    exporter.gauge.labels(NS, CANARY, "nan").set(float("nan"))
    exporter.gauge.labels(NS, CANARY, "one").set(1)
    wait_scraped(prometheus, f'test_value{{inferenceservice="{CANARY}",series="one"}}', 1)
    nan, several = measure_one(
        prometheus,
        gauge_metric("nan", 'test_value{inferenceservice="{{canary}}",series="nan"}', successCondition="result < 1"),
        gauge_metric("several", 'test_value{inferenceservice="{{canary}}"}', successCondition="result < 1"))
    assert nan.phase == "Inconclusive" and "NaN" in nan.message.replace("nan", "NaN")
    assert several.phase == "Inconclusive" and "series" in several.message


def test_too_few_samples_is_inconclusive_naming_the_sample_query(prometheus: Monitoring, exporter: Exporter) -> None:
    exporter.gauge.labels(NS, CANARY, "samples").set(7)
    wait_scraped(prometheus, f'test_value{{inferenceservice="{CANARY}",series="samples"}}', 7)
    sample_query = 'test_value{inferenceservice="{{canary}}",series="samples"}'
    metric = gauge_metric("guarded", 'sum(test_value{inferenceservice="{{canary}}",series="one"})', successCondition="result < 5",
                          minSampleSize=MinSampleSize(query=sample_query, minimum=10))
    (m,) = measure_one(prometheus, metric)
    assert m.phase == "Inconclusive" and "fewer than minSampleSize 10" in m.message
    assert m.query == f'test_value{{inferenceservice="{CANARY}",series="samples"}}'
    enough = metric.model_copy(update={"minSampleSize": MinSampleSize(query=sample_query, minimum=7)})
    assert measure_one(prometheus, enough)[0].phase == "Successful"


def test_stable_placeholder_without_a_stable_is_inconclusive(prometheus: Monitoring) -> None:
    (m,) = measure_one(prometheus, gauge_metric("cmp", 'sum(test_value{inferenceservice="{{stable}}"})', successCondition="result < 1"),
                       stable=None)
    assert m.phase == "Inconclusive" and "no stable revision" in m.message


def test_promql_error_is_an_error_naming_the_address(prometheus: Monitoring) -> None:
    (m,) = measure_one(prometheus, gauge_metric("broken", "sum(rate(", successCondition="result < 1"))
    assert m.phase == "Error" and prometheus.prometheus_url in m.message and "bad_data" in m.message


def test_builtin_checks_on_triton_shaped_series(prometheus: Monitoring, exporter: Exporter) -> None:
    """error-rate, p99-latency and prediction-drift by name only; PSI equals the known shares' PSI."""
    canary_items = [30, 20, 12, 10, 8, 6, 5, 4, 3, 2]  # per decile, x100 below
    stable_items = [20, 15, 12, 11, 10, 9, 8, 6, 5, 4]
    exporter.success.labels(NS, CANARY, "fmrec").inc(997)
    exporter.failure.labels(NS, CANARY, "fmrec").inc(3)
    exporter.success.labels(NS, STABLE, "fmrec").inc(500)
    exporter.p99.labels(NS, CANARY, "fmrec", "0.99").set(1_500_000)  # 1.5 s
    # Outcome reports are Triton requests of the outcome model: they must not dilute the error rate or set the p99.
    exporter.success.labels(NS, CANARY, "fmrec_outcome").inc(9000)
    exporter.p99.labels(NS, CANARY, "fmrec_outcome", "0.99").set(9_000_000)
    for d in range(10):
        exporter.items.labels(NS, CANARY, "fm", str(d + 1)).inc(canary_items[d] * 100)
        exporter.items.labels(NS, STABLE, "fm", str(d + 1)).inc(stable_items[d] * 100)
    wait_scraped(prometheus, f'sum(fmrec_recommended_items_total{{inferenceservice="{STABLE}"}})', sum(stable_items) * 100)
    errors, p99, drift = measure_one(prometheus, names=("error-rate", "p99-latency", "prediction-drift"))
    assert errors.phase == "Successful" and errors.value == pytest.approx(0.003), errors
    assert p99.phase == "Failed" and p99.value == pytest.approx(1.5), p99
    expected = analysis.psi([c / sum(canary_items) for c in canary_items], [s / sum(stable_items) for s in stable_items])
    assert drift.value == pytest.approx(expected, rel=1e-6), drift
    assert drift.phase == ("Successful" if expected < 0.2 else "Failed")

    exporter.failure.labels(NS, CANARY, "fmrec").inc(97)  # now 100 of 1100 fail
    wait_scraped(prometheus, f'sum(nv_inference_request_failure{{inferenceservice="{CANARY}"}})', 100)
    (errors,) = measure_one(prometheus, names=("error-rate",))
    assert errors.phase == "Failed" and errors.value is not None and errors.value > 0.01, errors


def test_builtin_error_rate_without_traffic_is_inconclusive(prometheus: Monitoring) -> None:
    """A revision with no requests: the minSampleSize guard speaks, never a pass."""
    action = Measure(("error-rate",), 1, 7, "strategy.steps[1]")  # revision 7 never answered anything
    (m,) = analysis.measure(action, spec_with(), NS, ROLLOUT, prometheus.prometheus_url, datetime.now(UTC))
    assert m.phase == "Inconclusive" and naming.isvc_name(ROLLOUT, 7) in m.query


def test_observed_split_from_backend_counters(prometheus: Monitoring, exporter: Exporter) -> None:
    current = exporter.registry.get_sample_value("nv_inference_request_success", {"namespace": NS, "inferenceservice": CANARY, "model": "fmrec"})
    wait_scraped(prometheus, f'sum(nv_inference_request_success{{inferenceservice="{CANARY}",model="fmrec"}})', current or 0.0)
    since = datetime.now(UTC)
    time.sleep(1.2)
    exporter.success.labels(NS, CANARY, "fmrec").inc(20)
    exporter.success.labels(NS, CANARY, "fmrec_outcome").inc(300)  # outcome reports: not part of the split
    exporter.success.labels(NS, STABLE, "fmrec").inc(75)
    exporter.failure.labels(NS, STABLE, "fmrec").inc(5)
    wait_scraped(prometheus, f'sum(nv_inference_request_failure{{inferenceservice="{STABLE}"}})', 5)
    got = analysis.observed_split(prometheus.prometheus_url, NS, ROLLOUT, 1, 2, since, datetime.now(UTC))
    assert got == SplitSample(canary_requests=20, total_requests=100, since=since)


def test_prometheus_stopped_is_an_error_naming_the_address(tmp_path: Path, exporter: Exporter) -> None:
    """Its own Prometheus: started, measured once, stopped, measured again."""
    sup = Supervisor(tmp_path)
    mon = Monitoring(tmp_path, static={"exporter": [f"127.0.0.1:{exporter.port}"]}, alertmanager=False, rules=False)
    metric = gauge_metric("up", 'sum(up{job="exporter"})', successCondition="result == 1")
    try:
        mon.start(sup)
        wait_scraped(mon, 'sum(up{job="exporter"})', 1)
        assert measure_one(mon, metric)[0].phase == "Successful"
    finally:
        sup.stop_all()
    (m,) = measure_one(mon, metric)
    assert m.phase == "Error" and m.address == mon.prometheus_url
    assert f"Prometheus at {mon.prometheus_url} is unreachable" in m.message
    split = analysis.observed_split(mon.prometheus_url, NS, ROLLOUT, 1, 2, datetime.now(UTC), datetime.now(UTC))
    assert isinstance(split, analysis.SplitUnknown) and mon.prometheus_url in split.message


class NotPrometheus:
    """A real HTTP server on a free port that answers every GET with one fixed status and body: what a
    Rollout meets when spec.analysis.prometheusAddress names something that is not Prometheus."""

    SECRET = "another-team's-page-7f3a"

    def __init__(self) -> None:
        import http.server
        import threading

        self.status, self.body = 200, b""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture(scope="module")
def not_prometheus() -> Iterator[NotPrometheus]:
    s = NotPrometheus()
    yield s
    s.server.shutdown()
    s.server.server_close()


S = NotPrometheus.SECRET
GARBAGE = [
    (200, f"<html>{S}</html>", "with a body that is not JSON"),
    (200, f'["{S}"]', "with JSON that is not an object (a list)"),
    (200, f'"{S}"', "with JSON that is not an object (a str)"),
    (200, f'{{"status": "success", "data": "{S}"}}', "without data.resultType scalar or vector"),
    (200, f'{{"status": "success", "data": {{"resultType": "vector", "result": [{{"metric": {{}}, "value": [1, "{S}"]}}]}}}}',
     "with a vector not shaped like a query result"),
    (200, f'{{"status": "success", "data": {{"resultType": "vector", "result": "{S}"}}}}', "with a vector not shaped like a query result"),
    (200, f'{{"status": "success", "data": {{"resultType": "scalar", "result": {{"{S}": 1}}}}}}', "with a scalar not shaped like a query result"),
    (200, "\xff\xfe" + S, "with a body that is not JSON"),
    (500, f"<html>{S}</html>", "answered HTTP 500: a body that is not a Prometheus error"),
    (404, f'["{S}"]', "answered HTTP 404: a body that is not a Prometheus error"),
]


@pytest.mark.parametrize(("status", "body", "says"), GARBAGE, ids=[
    "html", "json-list", "json-string", "data-not-object", "value-not-a-number", "result-not-a-list", "scalar-not-a-pair",
    "not-utf8", "http-500-html", "http-404-json-list"])
def test_an_answer_that_is_not_prometheus_is_an_error_naming_the_address_never_the_body(
        not_prometheus: NotPrometheus, status: int, body: str, says: str) -> None:
    not_prometheus.status, not_prometheus.body = status, body.encode("latin-1") if body.startswith("\xff") else body.encode()
    metric = gauge_metric("m", 'sum(up{namespace="{{namespace}}"})')
    (m,) = list(analysis.measure(Measure(("m",), 1, 2, "strategy.steps[1]"), spec_with(metric, address=not_prometheus.url),
                                 NS, ROLLOUT, "http://127.0.0.1:1", datetime.now(UTC)))
    assert m.phase == "Error" and m.address == not_prometheus.url, m
    assert f"Prometheus at {not_prometheus.url}" in m.message and says in m.message, m.message
    assert S not in m.message, m.message  # whatever answered is never readable through status
    split = analysis.observed_split(not_prometheus.url, NS, ROLLOUT, 1, 2, datetime.now(UTC), datetime.now(UTC))
    assert isinstance(split, analysis.SplitUnknown) and not_prometheus.url in split.message and S not in split.message


def test_a_real_service_that_is_not_prometheus_is_an_error_without_its_page(exporter: Exporter) -> None:
    """The exporter (prometheus_client) answers every path with its metrics page, 200 text/plain."""
    url = f"http://127.0.0.1:{exporter.port}"
    exporter.gauge.labels(NS, CANARY, "secret").set(42)
    (m,) = list(analysis.measure(Measure(("m",), 1, 2, "strategy.steps[1]"), spec_with(gauge_metric("m", "sum(up)"), address=url),
                                 NS, ROLLOUT, "http://127.0.0.1:1", datetime.now(UTC)))
    assert m.phase == "Error" and "answered HTTP 200 with a body that is not JSON" in m.message, m.message
    assert "test_value" not in m.message and "nv_inference" not in m.message, m.message


def test_experiment_counts_from_the_served_models_counters(prometheus: Monitoring, exporter: Exporter) -> None:
    """Each arm's exposures and `played` reports since the experiment started, as a real Prometheus counts them."""
    wait_scraped(prometheus, f'sum(fmrec_experiment_requests_total{{inferenceservice="{CANARY}"}})', 0)
    since = datetime.now(UTC)
    time.sleep(1.2)
    exporter.exposures.labels(NS, STABLE, "fmrec").inc(400)
    exporter.outcomes.labels(NS, STABLE, "fmrec", "played").inc(40)
    exporter.outcomes.labels(NS, STABLE, "fmrec", "ignored").inc(360)  # not the success outcome
    exporter.exposures.labels(NS, CANARY, "fmrec").inc(100)
    exporter.outcomes.labels(NS, CANARY, "fmrec", "played").inc(15)
    wait_scraped(prometheus, f'sum(fmrec_experiment_outcomes_total{{inferenceservice="{CANARY}",outcome="played"}})', 15)
    got = analysis.experiment_counts(prometheus.prometheus_url, NS, ROLLOUT, 1, 2, "played", since, datetime.now(UTC))
    assert isinstance(got, ExperimentCounts), got
    # exactly what was counted since (increase() would extrapolate to the window's edges: 454 for 400 here)
    assert (got.control, got.candidate, got.since) == (Arm(400, 40), Arm(100, 15), since), got
    stopped = analysis.experiment_counts("http://127.0.0.1:9", NS, ROLLOUT, 1, 2, "played", since, datetime.now(UTC), timeout=1)
    assert isinstance(stopped, ExperimentUnknown) and "127.0.0.1:9" in stopped.message
