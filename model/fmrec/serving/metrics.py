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
        }
        self.refusals = {name: self._families[REFUSED].Metric(labels={"model": model, "version": version, "input": name})
                         for name in (*(spec.name for spec in INPUTS), "request")}
        self.item_decile = item_decile
        self.recommended, self.top, self.unknown, self.events = {}, {}, {}, {}
        for task, buckets in score_buckets.items():
            labels = {"model": model, "version": version, "task": task}
            self.recommended[task] = [self._families[RECOMMENDED].Metric(labels={**labels, "decile": str(d)})
                                      for d in range(1, DECILES + 1)]
            self.top[task] = self._families[TOP_SCORE].Metric(labels=labels, buckets=[float(b) for b in buckets])
            self.unknown[task] = {f: self._families[UNKNOWN].Metric(labels={**labels, "field": f}) for f in UNKNOWN_FIELDS}
            self.events[task] = self._families[EVENTS].Metric(labels=labels)

    def record(self, results: Sequence[Recommendation]) -> None:
        """Update every metric for one executed batch (a handful of calls per task, not per item)."""
        tasks = sorted({r.task for r in results})
        for task in tasks:
            mine = [r for r in results if r.task == task]
            codes = np.concatenate([r.codes[r.codes > 0] for r in mine])
            counts = np.bincount(self.item_decile[codes], minlength=DECILES + 1)
            for d in np.flatnonzero(counts[1:]):
                self.recommended[task][d].increment(float(counts[d + 1]))
            for r in mine:
                if len(r.scores) and np.isfinite(r.scores[0]):
                    self.top[task].observe(float(r.scores[0]))
            self.events[task].increment(float(sum(r.events for r in mine)))
            for field in UNKNOWN_FIELDS:
                n = sum(r.unknown.get(field, 0) for r in mine)
                if n:
                    self.unknown[task][field].increment(float(n))

    def refused(self, tensor: str) -> None:
        """Count one request answered with a 400 because of this input ("" or an unknown name: the request)."""
        self.refusals.get(tensor, self.refusals["request"]).increment(1.0)


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
        }
        self.counts, self.positions = {}, {}
        for task in tasks:
            for outcome in OUTCOMES:
                labels = {"model": model, "version": version, "task": task, "outcome": outcome}
                self.counts[task, outcome] = self._families[OUTCOMES_TOTAL].Metric(labels=labels)
                self.positions[task, outcome] = self._families[OUTCOME_POSITION].Metric(labels=labels, buckets=list(POSITION_BUCKETS))
        self.refusals = {name: self._families[REFUSED].Metric(labels={"model": outcome_model, "version": outcome_version, "input": name})
                         for name in (*(spec.name for spec in OUTCOME_INPUTS), "request")}

    def record(self, rows: Sequence[Outcome]) -> None:
        """Count the validated outcomes of one executed batch: one increment per task and outcome present."""
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            counts[row.task, row.outcome] = counts.get((row.task, row.outcome), 0) + 1
            if row.position is not None:
                self.positions[row.task, row.outcome].observe(float(row.position))
        for key, n in counts.items():
            self.counts[key].increment(float(n))

    def refused(self, tensor: str) -> None:
        """Count one request answered with a 400 because of this input ("" or an unknown name: the request)."""
        self.refusals.get(tensor, self.refusals["request"]).increment(1.0)


def score_buckets(deciles: Sequence[float] | None) -> tuple[float, ...]:
    """Histogram buckets from the offline top-1 score deciles (rounded, strictly increasing), else the defaults."""
    if not deciles:
        return DEFAULT_SCORE_BUCKETS
    rounded = sorted({float(f"{d:.4g}") for d in deciles if np.isfinite(d)})
    return tuple(rounded) or DEFAULT_SCORE_BUCKETS
