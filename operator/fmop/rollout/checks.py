"""Built-in analysis checks: model-aware metrics a step names without writing PromQL.

    strategy:
      steps:
        - setWeight: 10
        - analysis: {metrics: [error-rate, p99-latency, prediction-drift]}

Each is an ordinary `Metric` (query, conditions, interval, count, minSampleSize), so it is measured,
counted and judged exactly like a user's; a metric of the same name in spec.analysis.metrics
replaces the built-in (to change a threshold, copy the query from `BUILTIN` and edit it).

The queries read Triton's own metrics and the served model's custom metrics
(model/fmrec/serving/metrics.py) with the target labels of `naming` (inferenceservice, namespace),
which the local Prometheus' relabelling sets (fmdev.local.monitoring); on a real cluster a
PodMonitor must relabel the same way. Windows are 1m, so a Prometheus scraping every 15-30 s still
has the two samples rate() needs, and a 1 s local scrape reacts within seconds.

Shadow top-k agreement (canary vs stable on the same mirrored request) is not a built-in: Prometheus
only sees per-series aggregates, and agreement needs both answers to one request side by side. See
`SHADOW_AGREEMENT` for what it would take.
"""

from __future__ import annotations

from fmop.api.rollout import Metric, MinSampleSize, RolloutSpec
from fmop.rollout import naming

WINDOW = "1m"
_ISVC = naming.PROM_ISVC_LABEL
_NS = naming.PROM_NAMESPACE_LABEL


# Each recommend model NAME is exported with an outcome model NAME_outcome (fmrec.serving.protocol.outcome_model)
# whose requests, clients' outcome reports, Triton counts too: they are not inference and must neither dilute the
# error rate nor set the latency or the observed split.
NOT_OUTCOMES = 'model!~".+_outcome"'


def _sel(side: str) -> str:
    """Label matchers selecting one revision's predictor pods, its recommend models only; side is "canary" or "stable"."""
    return f'{_NS}="{{{{namespace}}}}",{_ISVC}="{{{{{side}}}}}",{NOT_OUTCOMES}'


def _requests(side: str) -> str:
    """Inference requests a revision answered (successes plus failures) over the window."""
    return (f"sum(increase(nv_inference_request_success{{{_sel(side)}}}[{WINDOW}])) + "
            f"sum(increase(nv_inference_request_failure{{{_sel(side)}}}[{WINDOW}]))")


def _decile_share(side: str) -> str:
    """Share of recommended items per popularity decile over the window, floored at 1e-4 so PSI stays finite."""
    rate = f"sum by (decile) (rate(fmrec_recommended_items_total{{{_sel(side)}}}[{WINDOW}]))"
    total = f"ignoring (decile) group_left sum(rate(fmrec_recommended_items_total{{{_sel(side)}}}[{WINDOW}]))"
    return f"clamp_min({rate} / {total}, 0.0001)"


# Error share of the canary's inference requests: failures / (successes + failures). No requests in
# the window is 0/0 = NaN, i.e. Inconclusive, never a pass.
ERROR_RATE = Metric(
    name="error-rate",
    query=(f"sum(rate(nv_inference_request_failure{{{_sel('canary')}}}[{WINDOW}])) / "
           f"(sum(rate(nv_inference_request_success{{{_sel('canary')}}}[{WINDOW}])) + "
           f"sum(rate(nv_inference_request_failure{{{_sel('canary')}}}[{WINDOW}])))"),
    successCondition="result < 0.01",
    interval="10s",
    count=3,
    minSampleSize=MinSampleSize(query=_requests("canary"), minimum=20),
)

# p99 of the canary's end-to-end request time in seconds, the worst pod's: Triton's latency summary
# (`--metrics-config=summary_latencies=true`, set on the local runtime), a sliding-window quantile per
# pod. Quantiles of several pods cannot be averaged, so the slowest pod speaks for the revision.
P99_LATENCY = Metric(
    name="p99-latency",
    query=f'max(nv_inference_request_summary_us{{{_sel("canary")},quantile="0.99"}}) / 1e6',
    successCondition="result < 1",
    interval="10s",
    count=3,
    minSampleSize=MinSampleSize(query=_requests("canary"), minimum=20),
)

# Population stability index between the canary's and the stable's popularity-decile shares of what
# they recommend, over the same window (and so the same traffic mix): sum over deciles of
# (p - q) * ln(p / q). Under 0.1 is the usual "no shift", over 0.25 a real one.
PREDICTION_DRIFT = Metric(
    name="prediction-drift",
    query=(f"sum(({_decile_share('canary')} - {_decile_share('stable')}) * "
           f"ln({_decile_share('canary')} / {_decile_share('stable')}))"),
    successCondition="result < 0.2",
    interval="10s",
    count=3,
    # PSI of two samples of n items each is biased upwards by about (deciles - 1) * 2 / n: with
    # 1000 items per side the noise floor is ~0.02, well under the threshold.
    minSampleSize=MinSampleSize(
        query=(f"clamp_max(sum(increase(fmrec_recommended_items_total{{{_sel('canary')}}}[{WINDOW}])), "
               f"scalar(sum(increase(fmrec_recommended_items_total{{{_sel('stable')}}}[{WINDOW}]))))"),
        minimum=1000,
    ),
)

BUILTIN: dict[str, Metric] = {m.name: m for m in (ERROR_RATE, P99_LATENCY, PREDICTION_DRIFT)}

# The requests each revision's Triton counted: the observed split's numerator and denominator.
REQUESTS_COUNTER = ("nv_inference_request_success", "nv_inference_request_failure")

# An experiment step's counters, exported by the served model per predictor pod (relabelled like nv_inference_*: namespace,
# rollout, revision, inferenceservice). Only requests and outcome reports that carried the naming.BUCKET_HEADER count.
# Create every series at 0 when the pod starts: increase() does not count a series' first sample as an increase.
EXPERIMENT_REQUESTS_COUNTER = "fmrec_experiment_requests_total"  # users answered by recommend requests with the header: the exposures
EXPERIMENT_OUTCOMES_COUNTER = "fmrec_experiment_outcomes_total"  # outcome reports, by label EXPERIMENT_OUTCOME_LABEL
EXPERIMENT_OUTCOME_LABEL = "outcome"
EXPERIMENT_OUTCOMES = ("played", "clicked", "added", "skipped", "ignored")  # the API's ExperimentOutcome

SHADOW_AGREEMENT = """\
Shadow top-k agreement (overlap@k of canary and stable on the same mirrored request) cannot be
measured from Prometheus: both sides export only aggregates per series, the proxy discards the
mirror's response, and no aggregate of per-request top-k lists recovers their per-request overlap
(the decile PSI above is the aggregate that can be had). A sound design needs the two answers to
one request side by side:
1. a request key both sides see: the gateway (or client) sets a request-id header, which Traefik's
   and Istio's mirroring copy to the mirror;
2. each predictor emits (request id, revision, top-k item IDs) for a deterministic sample of keys
   (hash(request id) mod N == 0, so both sides sample the same requests) to a sink the operator can
   read: a log shipped to a store, or a small collector Service;
3. the analysis joins the two sides by request id over the window and reports the mean overlap@k
   (|A intersect B| / k) and the share of joined pairs as its minimum sample (requests seen by only
   one side are not evidence).
Without the sink (2) there is nothing to join; it is a new serving-side component, not a query.
An alternative that needs no sink but is not "on mirrored requests": the operator sends a fixed
probe set of histories (e.g. from the version's evaluation data) to both predictor Services and
compares their answers directly.
"""


def resolve(spec: RolloutSpec, name: str) -> Metric | None:
    """The metric a step names: the spec's definition, else the built-in of that name, else None."""
    return next((m for m in spec.analysis.metrics if m.name == name), None) or BUILTIN.get(name)
