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

The decile counter is a histogram kept as one counter per bucket: PSI needs per-bucket shares,
and it costs at most ten metric updates per task and batch instead of K per request.
Series exist from start-up (at 0) for every task, so a rate over them is never empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fmrec.data.schema import CONTEXT_FIELDS, IntArray
from fmrec.serving.infer import Recommendation
from fmrec.serving.protocol import INPUTS
from fmrec.vocab import DECILES

RECOMMENDED = "fmrec_recommended_items_total"
TOP_SCORE = "fmrec_top_score"
UNKNOWN = "fmrec_unknown_values_total"
EVENTS = "fmrec_history_events_total"
REFUSED = "fmrec_refused_requests_total"
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
            REFUSED: fam(name=REFUSED, description="requests answered with a 400, by the input at fault", kind=fam.COUNTER),
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


def score_buckets(deciles: Sequence[float] | None) -> tuple[float, ...]:
    """Histogram buckets from the offline top-1 score deciles (rounded, strictly increasing), else the defaults."""
    if not deciles:
        return DEFAULT_SCORE_BUCKETS
    rounded = sorted({float(f"{d:.4g}") for d in deciles if np.isfinite(d)})
    return tuple(rounded) or DEFAULT_SCORE_BUCKETS
