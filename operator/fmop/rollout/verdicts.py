"""Pure verdicts the engine builds on: one analysis metric from its measurements, and the observed split.

Analysis semantics (issue #7, section 4):
- Successful and Failed measurements count towards `count`; more than `failureLimit` failures fail the metric.
- Inconclusive (the query returned no data, or fewer samples than minSampleSize) is never a success and
  never a failure: the metric is Inconclusive until a measurement returns a value again.
- Error (Prometheus could not be asked) is counted; more than `inconclusiveLimit` errors in a row make
  the metric Error until Prometheus answers again. Errors never fail a metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from fmop.api.rollout import MeasurementResult, Metric
from fmop.rollout.clock import ts
from fmop.rollout.types import Measurement

RunPhase = Literal["Running", "Successful", "Failed", "Error", "Inconclusive"]
DONE = ("Successful", "Failed")


def split_within_sigma(requests_canary: int, requests_total: int, weight_percent: float, sigmas: float = 3.0) -> bool:
    """Is `requests_canary` out of `requests_total` a plausible draw at `weight_percent`?

    Each request goes to the canary with probability p = weight/100, so the canary count is
    binomial: mean n*p, standard deviation sqrt(n*p*(1-p)). Within `sigmas` of the mean passes.
    No requests is no evidence either way, so it passes; at 0% and 100% only the exact count does.
    """
    if not 0 <= requests_canary <= requests_total:
        raise ValueError(f"requests_canary={requests_canary} must be between 0 and requests_total={requests_total}")
    if not 0 <= weight_percent <= 100:
        raise ValueError(f"weight_percent={weight_percent} must be between 0 and 100")
    p = weight_percent / 100
    mean = requests_total * p
    sigma = math.sqrt(requests_total * p * (1 - p))
    return abs(requests_canary - mean) <= sigmas * sigma + 1e-9


def record(metric: Metric, result: MeasurementResult, m: Measurement) -> MeasurementResult:
    """Count one new measurement into a metric's result and give the metric's verdict (its `phase`)."""
    if result.phase in DONE:
        return result
    successes = result.successes + (m.phase == "Successful")
    failures = result.failures + (m.phase == "Failed")
    errors = result.errors + (m.phase == "Error")
    inconclusive = result.inconclusive + (m.phase == "Inconclusive")
    consecutive = result.consecutiveErrors + 1 if m.phase == "Error" else 0
    counted = successes + failures
    phase: RunPhase
    if failures > metric.failureLimit:
        phase = "Failed"
        message = f"{failures} of {counted} measurements failed (failureLimit {metric.failureLimit}); last value {_value(m)}, {_conditions(metric)}"
    elif counted >= metric.count:
        phase = "Successful"
        message = f"{successes} of {counted} measurements passed (failureLimit {metric.failureLimit}); last value {_value(m)}"
    elif m.phase == "Inconclusive":
        phase = "Inconclusive"
        message = f"no data from {m.query or 'its query'}" + (f": {m.message}" if m.message else "")
    elif consecutive > metric.inconclusiveLimit:
        phase = "Error"
        message = (f"{consecutive} errors in a row (inconclusiveLimit {metric.inconclusiveLimit}) asking Prometheus "
                   f"at {m.address or 'the default address'}" + (f": {m.message}" if m.message else ""))
    else:
        phase = "Running"
        message = f"{counted} of {metric.count} measurements, {failures} failed" + (f"; last error: {m.message}" if m.phase == "Error" else "")
    return result.model_copy(update={
        "phase": phase, "message": message[:4096], "measuredAt": ts(m.measured_at),
        "value": m.value if m.value is not None else result.value,
        "successes": successes, "failures": failures, "errors": errors, "inconclusive": inconclusive, "consecutiveErrors": consecutive,
    })


def undefined(name: str, where: str) -> MeasurementResult:
    """A step names a metric spec.analysis.metrics lacks (the API server's CEL rule normally prevents this)."""
    return MeasurementResult(metric=name, phase="Error",
                             message=f"metric {name} is not defined in spec.analysis.metrics; define it or remove it from {where}")


def run_phase(results: Sequence[MeasurementResult]) -> RunPhase:
    """One verdict over an analysis run: a failure wins, then no data, then errors; success needs every metric."""
    phases = {r.phase for r in results}
    if "Failed" in phases:
        return "Failed"
    if "Inconclusive" in phases:
        return "Inconclusive"
    if "Error" in phases:
        return "Error"
    return "Successful" if phases <= {"Successful"} else "Running"


def _value(m: Measurement) -> str:
    return "none" if m.value is None else f"{m.value:g}"


def _conditions(metric: Metric) -> str:
    parts = [f"successCondition {metric.successCondition}" if metric.successCondition else "",
             f"failureCondition {metric.failureCondition}" if metric.failureCondition else ""]
    return " and ".join(p for p in parts if p)
