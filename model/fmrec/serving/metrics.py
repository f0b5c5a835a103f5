"""Model-aware metrics on Triton's /metrics endpoint, per task: what a Rollout's analysis reads.

    fmrec_recommended_items_total{model,version,task,decile}  counter: recommended items by the
        popularity decile of the item in the training events (1 = the most popular tenth of items,
        10 = the least); one series per decile, so the shares per decile (and PSI against the
        offline shares, or stable against canary) come straight from rate() per series
    fmrec_top_score{model,version,task}                      histogram: the top-1 score of each
        answered user; buckets at the deciles of the offline top-1 scores when training recorded
        them, so offline each bucket holds a tenth of the users
    fmrec_unknown_values_total{model,version,task,field}     counter: values training never saw,
        by field (item, action, device, page, locale)
    fmrec_history_events_total{model,version,task}           counter: events received (the
        denominator for the unknown share)
    fmrec_refused_requests_total{model,version,input}        counter: requests answered with a 400,
        by the input at fault (ITEMS, TIMESTAMPS, ..., or "request"). Triton counts those
        answers as successes (fmrec.serving.triton_model says why): this is where they show.

The outcome model (NAME_outcome, fmrec.serving.outcome_model) counts what users did with the
recommendations, labelled with the recommend model it reports on (model = NAME, its version):

    fmrec_outcomes_total{model,version,task,outcome}         counter: reported outcomes, outcome one
        of fmrec.serving.protocol.OUTCOMES (clicked, played, added, skipped, ignored) and no other
        value: an unknown outcome is refused, never a new series
    fmrec_outcome_position{model,version,task,outcome}       histogram: the 1-based rank of the item,
        for outcomes reported with POSITION; buckets le 1, 2, 3, 5, 10 and +Inf, i.e. positions 1,
        2, 3, 4-5, 6-10 and 11 up to the exported K
    fmrec_refused_requests_total{model=NAME_outcome,version,input}  as above, for OUTCOME, POSITION,
        TASK or "request"

What to divide outcomes by: fmrec_top_score_count{model,version,task}, the recommend model's count
of answered users (one observation per user row answered with at least one item: a list the user
can act on). Triton's nv_inference_request_success{model=NAME} is no denominator: it counts
requests, not users (a request may carry 64), and counts refused requests too. So "played per
recommendation" of a revision is
    sum(increase(fmrec_outcomes_total{model="fmrec",outcome="played"}[w]))
      / sum(increase(fmrec_top_score_count{model="fmrec"}[w]))
with the revision's pod selector in both; it can exceed 1 (several plays from one list), and
outcomes reach the revision that served the list only while the user's bucket routes to it.

A/B experiments (fmrec.serving.protocol, "Experiments"): requests and reports that carried the
bucket header x-fmops-bucket are the experiment's; those without it (users in no experiment, whom the
stable revision serves too) count in every metric above and never in these two:

    fmrec_experiment_requests_total{model,version,task}      counter: the recommend model's user rows
        answered with at least one item (the rows fmrec_top_score_count counts) in requests that
        carried a bucket: the experiment's exposures
    fmrec_experiment_outcomes_total{model,version,task,outcome}  counter, on the outcome model and
        labelled like fmrec_outcomes_total (model = NAME): the outcome rows of reports that carried a
        bucket

so a revision's "played per exposure" in an experiment step is
    sum(increase(fmrec_experiment_outcomes_total{model="fmrec",outcome="played"}[w]))
      / sum(increase(fmrec_experiment_requests_total{model="fmrec"}[w]))
A malformed bucket value counts in neither (nor anywhere else): the request is answered and counted
like one without the header.

The decile counter is a histogram kept as one counter per bucket: PSI needs per-bucket shares,
and it costs at most ten metric updates per task and batch instead of K per request.
Series exist from start-up (at 0) for every task, so a rate over them is never empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fmrec.data.schema import CONTEXT_FIELDS, IntArray
from fmrec.serving.protocol import INPUTS, OUTCOME_INPUTS, OUTCOMES, Outcome
from fmrec.vocab import DECILES

if TYPE_CHECKING:  # the outcome model imports this module without torch
    from fmrec.serving.infer import Recommendation

RECOMMENDED = "fmrec_recommended_items_total"
TOP_SCORE = "fmrec_top_score"
UNKNOWN = "fmrec_unknown_values_total"
EVENTS = "fmrec_history_events_total"
REFUSED = "fmrec_refused_requests_total"
OUTCOMES_TOTAL = "fmrec_outcomes_total"
OUTCOME_POSITION = "fmrec_outcome_position"
EXPERIMENT_REQUESTS = "fmrec_experiment_requests_total"
EXPERIMENT_OUTCOMES = "fmrec_experiment_outcomes_total"
POSITION_BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0)  # positions 1, 2, 3, 4-5, 6-10, 11+ (the +Inf bucket)
REFUSED_HELP = "requests answered with a 400, by the input at fault"  # one text: each model registers the family
UNKNOWN_FIELDS = ("item", "action", *CONTEXT_FIELDS)
DEFAULT_SCORE_BUCKETS = (-4.0, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)


class ServingMetrics:
    """Triton custom metrics for one served model; `pb` is triton_python_backend_utils (or a fake in tests)."""

    def __init__(self, pb: Any, model: str, version: str, score_buckets: Mapping[str, Sequence[float]],
                 item_decile: IntArray) -> None:
        fam = pb.MetricFamily
        self._families = {  # kept alive as long as their metrics are
            RECOMMENDED: fam(name=RECOMMENDED, description="recommended items by training-popularity decile (1 = most popular)",
                             kind=fam.COUNTER),
            TOP_SCORE: fam(name=TOP_SCORE, description="top-1 score of each answered user", kind=fam.HISTOGRAM),
            UNKNOWN: fam(name=UNKNOWN, description="request values training never saw, by field", kind=fam.COUNTER),
            EVENTS: fam(name=EVENTS, description="history events received", kind=fam.COUNTER),
            REFUSED: fam(name=REFUSED, description=REFUSED_HELP, kind=fam.COUNTER),
            EXPERIMENT_REQUESTS: fam(name=EXPERIMENT_REQUESTS, description="users answered in requests with the bucket header "
                                     "(experiment exposures)", kind=fam.COUNTER),
        }
        self.refusals = {name: self._families[REFUSED].Metric(labels={"model": model, "version": version, "input": name})
                         for name in (*(spec.name for spec in INPUTS), "request")}
        self.item_decile = item_decile
        self.recommended, self.top, self.unknown, self.events, self.exposures = {}, {}, {}, {}, {}
        for task, buckets in score_buckets.items():
            labels = {"model": model, "version": version, "task": task}
            self.recommended[task] = [self._families[RECOMMENDED].Metric(labels={**labels, "decile": str(d)})
                                      for d in range(1, DECILES + 1)]
            self.top[task] = self._families[TOP_SCORE].Metric(labels=labels, buckets=[float(b) for b in buckets])
            self.unknown[task] = {f: self._families[UNKNOWN].Metric(labels={**labels, "field": f}) for f in UNKNOWN_FIELDS}
            self.events[task] = self._families[EVENTS].Metric(labels=labels)
            self.exposures[task] = self._families[EXPERIMENT_REQUESTS].Metric(labels=labels)

    def record(self, results: Sequence[Recommendation], experiment: Sequence[bool] = ()) -> None:
        """Update every metric for one executed batch (a handful of calls per task, not per item);
        `experiment[i]` says whether results[i] came from a request that carried a bucket (none did when empty)."""
        tasks = sorted({r.task for r in results})
        flags = list(experiment) or [False] * len(results)
        if len(flags) != len(results):
            raise ValueError(f"{len(flags)} experiment flags for {len(results)} results")
        for task in tasks:
            mine = [r for r in results if r.task == task]
            codes = np.concatenate([r.codes[r.codes > 0] for r in mine])
            counts = np.bincount(self.item_decile[codes], minlength=DECILES + 1)
            for d in np.flatnonzero(counts[1:]):
                self.recommended[task][d].increment(float(counts[d + 1]))
            for r in mine:
                if answered(r):
                    self.top[task].observe(float(r.scores[0]))
            exposed = sum(1 for r, e in zip(results, flags, strict=True) if e and r.task == task and answered(r))
            if exposed:
                self.exposures[task].increment(float(exposed))
            self.events[task].increment(float(sum(r.events for r in mine)))
            for field in UNKNOWN_FIELDS:
                n = sum(r.unknown.get(field, 0) for r in mine)
                if n:
                    self.unknown[task][field].increment(float(n))

    def refused(self, tensor: str) -> None:
        """Count one request answered with a 400 because of this input ("" or an unknown name: the request)."""
        self.refusals.get(tensor, self.refusals["request"]).increment(1.0)


def answered(r: Recommendation) -> bool:
    """Whether the user got at least one item (a list to act on): the rows fmrec_top_score counts."""
    return bool(len(r.scores) and np.isfinite(r.scores[0]))


class OutcomeMetrics:
    """Triton custom metrics of one outcome model (`outcome_model`, named NAME_outcome), reporting on
    the recommend model `model` (NAME) version `version` and its `tasks`: every series exists from
    start-up (at 0), one per task and outcome, and no request can add one."""

    def __init__(self, pb: Any, outcome_model: str, outcome_version: str, model: str, version: str, tasks: Sequence[str]) -> None:
        fam = pb.MetricFamily
        self._families = {  # kept alive as long as their metrics are
            OUTCOMES_TOTAL: fam(name=OUTCOMES_TOTAL, description="outcomes reported for recommended items, by outcome",
                                kind=fam.COUNTER),
            OUTCOME_POSITION: fam(name=OUTCOME_POSITION, description="1-based rank of the item an outcome was reported for",
                                  kind=fam.HISTOGRAM),
            REFUSED: fam(name=REFUSED, description=REFUSED_HELP, kind=fam.COUNTER),
            EXPERIMENT_OUTCOMES: fam(name=EXPERIMENT_OUTCOMES, description="outcomes reported with the bucket header "
                                     "(in an experiment), by outcome", kind=fam.COUNTER),
        }
        self.counts, self.positions, self.experiment = {}, {}, {}
        for task in tasks:
            for outcome in OUTCOMES:
                labels = {"model": model, "version": version, "task": task, "outcome": outcome}
                self.counts[task, outcome] = self._families[OUTCOMES_TOTAL].Metric(labels=labels)
                self.experiment[task, outcome] = self._families[EXPERIMENT_OUTCOMES].Metric(labels=labels)
                self.positions[task, outcome] = self._families[OUTCOME_POSITION].Metric(labels=labels, buckets=list(POSITION_BUCKETS))
        self.refusals = {name: self._families[REFUSED].Metric(labels={"model": outcome_model, "version": outcome_version, "input": name})
                         for name in (*(spec.name for spec in OUTCOME_INPUTS), "request")}

    def record(self, rows: Sequence[Outcome], experiment: Sequence[bool] = ()) -> None:
        """Count the validated outcomes of one executed batch: one increment per task and outcome present;
        `experiment[i]` says whether rows[i] came from a report that carried a bucket (none did when empty)."""
        flags = list(experiment) or [False] * len(rows)
        if len(flags) != len(rows):
            raise ValueError(f"{len(flags)} experiment flags for {len(rows)} outcome rows")
        counts: dict[tuple[str, str], int] = {}
        exposed: dict[tuple[str, str], int] = {}
        for row, in_experiment in zip(rows, flags, strict=True):
            counts[row.task, row.outcome] = counts.get((row.task, row.outcome), 0) + 1
            if in_experiment:
                exposed[row.task, row.outcome] = exposed.get((row.task, row.outcome), 0) + 1
            if row.position is not None:
                self.positions[row.task, row.outcome].observe(float(row.position))
        for key, n in counts.items():
            self.counts[key].increment(float(n))
        for key, n in exposed.items():
            self.experiment[key].increment(float(n))

    def refused(self, tensor: str) -> None:
        """Count one request answered with a 400 because of this input ("" or an unknown name: the request)."""
        self.refusals.get(tensor, self.refusals["request"]).increment(1.0)


def score_buckets(deciles: Sequence[float] | None) -> tuple[float, ...]:
    """Histogram buckets from the offline top-1 score deciles (rounded, strictly increasing), else the defaults."""
    if not deciles:
        return DEFAULT_SCORE_BUCKETS
    rounded = sorted({float(f"{d:.4g}") for d in deciles if np.isfinite(d)})
    return tuple(rounded) or DEFAULT_SCORE_BUCKETS
