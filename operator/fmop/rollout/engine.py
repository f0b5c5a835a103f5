"""The rollout engine: every decision about a Rollout as one pure function, `decide`.

`decide` reads like Argo Rollouts' rolloutCanary: a list of small `_reconcile_x` steps, each of which
may settle the call, followed by the level-triggered actions (InferenceServices, traffic, measurements,
clean-up) and one status summary. No I/O: the controller reads the observations, calls decide,
writes the returned status first and then carries out the actions in the order given.

Every decision about a Rollout is made here, so that it can be tested without a cluster: what
FollowLatest serves, whether nothing can be served yet (blocked), the conditions (Ready included),
when to sample the observed split, the order of the actions (traffic first on a rollback), never a
route to a canary that is not Ready, and whether to look again soon (`Decision.busy`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from fmop.api.common import Condition
from fmop.api.rollout import (
    ExperimentArm,
    ExperimentSampleRatio,
    ExperimentStatus,
    ExperimentStep,
    HandledAlert,
    HistoryEntry,
    Interval,
    MeasurementResult,
    Metric,
    RolloutSpec,
    RolloutStatus,
    ServedRevision,
    Step,
    experiment_refusal,
)
from fmop.conditions import Cond, Transition, merge
from fmop.rollout import checks, naming, sequential, verdicts
from fmop.rollout.clock import parse_duration, parse_ts, ts, utc
from fmop.rollout.types import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    Action,
    Alert,
    Decision,
    EmitEvent,
    EnsureInferenceService,
    ExperimentCounts,
    ExperimentUnknown,
    InferenceServiceState,
    Measure,
    ModelRef,
    Observations,
    RecordHistory,
    RemoveInferenceService,
    SampleExperiment,
    SampleSplit,
    SetTraffic,
    Side,
    SplitUnknown,
)

SHADOW = -1  # status.currentStepIndex while shadowing
ACTIVE = ("Pending", "Shadowing", "Progressing", "Paused")
FINISHED = ("Promoted", "RolledBack", "Failed")
PROGRESSING, ANALYSIS, READY = "Progressing", "Analysis", "Ready"  # the conditions the engine owns (besides the references')
RECONCILING, STALLED = "Reconciling", "Stalled"  # kstatus (Flux, kubectl wait, Argo CD): work under way / needs a person
QUIET = (PROGRESSING, ANALYSIS, RECONCILING, STALLED)  # transitions of these are told by the step Events, not one more Event each
MAX_HANDLED_ALERTS = 64


@dataclass(frozen=True)
class _Wait:
    """Why the Rollout stays where it is on this call.

    hold:  on something outside the operator (InferenceService, traffic provider); counts towards spec.progressDeadline
    stuck: on evidence that does not come (an analysis without data or erroring, a split that cannot be read);
           phase Paused, and it counts towards spec.progressDeadline too: a canary never keeps its share for ever
    pause: deliberately (spec.paused, a pause step); phase Paused, no deadline
    work:  doing what the current step says (shadowing, measuring)

    event_driven: what ends the wait is an event (an InferenceService becoming Ready, a spec edit), not time
    """

    kind: Literal["hold", "stuck", "pause", "work"]
    reason: str
    message: str
    event_driven: bool = False


@dataclass(frozen=True)
class _View:
    """The current step as seen now: is it done, and what is it doing (or waiting for)."""

    done: bool
    wait: _Wait


# A reconcile step returns None to let the next one run, a _Wait when the Rollout waits, or
# "settled" when it made a transition that ends this call (or there is nothing to do).
_Outcome = _Wait | Literal["settled"] | None


@dataclass
class _Tick:
    """One call of decide: the inputs, the status being built and the actions collected so far."""

    spec: RolloutSpec
    obs: Observations
    now: datetime
    status: RolloutStatus
    actions: list[Action] = field(default_factory=list)  # level-triggered: InferenceServices, traffic, measurements
    notes: list[Action] = field(default_factory=list)  # once per transition: history records and Events
    promote: bool = False  # a new promote request arrived on this call
    retry: bool = False
    abort: bool = False
    promote_used: bool = False
    retry_used: bool = False
    abort_used: bool = False
    held: bool = False  # spec.model changed but cannot be served yet (observations.hold): nothing new started

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.notes.append(EmitEvent(type_, reason, _clip(message)))


def decide(spec: RolloutSpec, status: RolloutStatus, observations: Observations, now: datetime) -> Decision:
    """The next status of a Rollout and the actions that get the world there. Pure and deterministic.

    State machine (status.phase; status.currentStepIndex is -1 while shadowing)::

        Pending --canary Ready--> Shadowing --shadow.duration over, shadow analysis Successful--> Progressing
          (no strategy.shadow: straight to steps[0])
        Progressing: steps[i] done (setWeight applied and the observed split within 3 sigma, pause over or
          promoted, analysis Successful) --> steps[i+1]; after the last step --> Promoted
        Paused <--> Shadowing/Progressing: spec.paused, a pause step, an analysis without data (Inconclusive)
          or with more errors in a row than inconclusiveLimit; it resumes by itself when the cause goes away
        any active phase --failed analysis (failureLimit), a new matching alert or an abort request--> RolledBack
        any active phase --waiting on the outside longer than spec.progressDeadline--> Failed (naming the step)
        spec.model changes --> the revision in flight is Superseded; a new revision starts at Pending
        RolledBack / Failed --retry request or a new spec.model--> a new revision at Pending
        a new spec.model whose references do not resolve yet (observations.hold: an adapter without a version
          for the new FM version, a version the quality gate held back) starts nothing: what is served keeps
          serving, as one bundle, until the whole new model can be served

    The first revision has nothing to compare against: it becomes the stable and is Promoted once Ready.

    Restartable: all progress lives in status. Requests (promote, retry, abort) and alerts are remembered once
    handled, a measurement is counted once (by metric and measuredAt), and a step never ends at the
    same instant it began, so calling decide again with its own output and the same observations
    changes nothing: no transition happens twice.
    """
    t = _Tick(effective_spec(spec, observations), observations, utc(now), status.model_copy(deep=True))
    if observations.hold is not None and status.revision == 0:
        return _blocked(t)
    outcome: _Outcome = None
    for reconcile in _RECONCILERS:
        outcome = reconcile(t)
        if outcome is not None:
            break
    _reconcile_deadline(t, outcome)
    _reconcile_serving(t)
    _summarise(t, outcome)
    busy = _busy(t, outcome)
    return Decision(t.status, tuple(_ordered(t) + t.notes), busy=busy, next_look=_next_look(t, busy))


def effective_spec(spec: RolloutSpec, observations: Observations) -> RolloutSpec:
    """The spec as served: FollowLatest serves the newest complete bundle the reference check resolved, as if
    named (a served revision is pinned to what it serves; status has the spec's schema rules too)."""
    if observations.latest_version is None:
        return spec
    target = spec.model.foundationModel.model_copy(update={"version": observations.latest_version, "versionPolicy": "Pinned"})
    return spec.model_copy(update={"model": spec.model.model_copy(update={"foundationModel": target})})


def _blocked(t: _Tick) -> Decision:
    """Nothing serves yet and spec.model cannot be served (a bad reference, no artifact): say so, touch nothing else."""
    s, hold = t.status, t.obs.hold or ""
    wanted = list(t.obs.references)
    if not any(c.type == READY and c.status == "False" and c.message == hold for c in wanted):
        wanted = [c for c in wanted if c.type != READY] + [Cond(READY, "False", "NotServing", hold)]
    failed = t.obs.hold_failed
    wanted += [Cond(RECONCILING, "False" if failed else "True", "Blocked", hold), Cond(STALLED, "True" if failed else "False", "Blocked", hold)]
    merged, transitions = merge([c.model_dump(exclude_none=True) for c in s.conditions], wanted, t.obs.generation, ts(t.now))
    s.conditions = [Condition.model_validate(c) for c in merged]
    transitions = [tr for tr in transitions if tr.cond.type not in QUIET]
    s.phase = "Failed" if t.obs.hold_failed else s.phase
    s.message = hold[:1024]
    if t.obs.generation is not None:
        s.observedGeneration = t.obs.generation
    _transition_events(t, transitions)
    return Decision(s, tuple(t.notes), blocked=True)


def decide_invalid(status: RolloutStatus, observations: Observations, now: datetime, problem: str) -> Decision:
    """spec no longer validates (a bad edit, CRDs older than the operator): nothing new can start, and the revision
    in flight is Failed, so its traffic goes back to the stable now rather than when the spec is fixed. A new
    matching alert is still acted on (the webhook matched it on spec.rollback.alerts, which may still read): the
    revision is RolledBack with the alert as its reason. Only status (and the observations) are needed."""
    s, now = status.model_copy(deep=True), utc(now)
    notes: list[Action] = []
    new_alerts = sorted((a for a in observations.alerts if not _alert_handled(s, a)), key=lambda a: (a.starts_at, a.fingerprint, a.name))
    _remember_alerts(s, new_alerts)
    rolling = _rolling(s)
    actions: list[Action] = []
    if rolling is not None and s.canary is not None and s.stable is not None:
        started = parse_ts(rolling.startedAt) if rolling.startedAt else None
        relevant = [a for a in new_alerts if _other_revision(a, rolling.revision) is None and (started is None or a.starts_at >= started)]
        outcome: Literal["RolledBack", "Failed"] = "RolledBack" if relevant else "Failed"
        reason = _alert_reason(relevant[0]) if relevant else f"spec does not validate: {problem}"
        entry = _history_entry(rolling, outcome, reason, now)
        s.history = [*s.history, entry][-RolloutSpec.model_fields["revisionHistoryLimit"].default:]  # the spec's limit cannot be read
        s.canaryWeight, s.stableWeight, s.mirrorPercent, s.rollbackReason, s.heldSince = 0, 100, 0, _clip(reason), None
        notes += [RecordHistory(entry), EmitEvent("Warning", outcome, _clip(
            f"revision {rolling.revision} ({_label(rolling)}) {'rolled back' if relevant else 'failed'}: {reason}; "
            f"all traffic on stable revision {s.stable.revision} ({_label(s.stable)})"))]
        actions.append(SetTraffic(s.stable.revision, None, 0, 0))
        s.phase = outcome
    elif s.phase != "RolledBack":
        s.phase = "Failed"
    wanted = [Cond("Accepted", "False", "InvalidSpec", problem), Cond(RECONCILING, "False", "InvalidSpec", problem),
              Cond(STALLED, "True", "InvalidSpec", problem)]
    merged, transitions = merge([c.model_dump(exclude_none=True) for c in s.conditions], wanted, observations.generation, ts(now))
    transitions = [tr for tr in transitions if tr.cond.type not in QUIET]
    s.conditions = [Condition.model_validate(c) for c in merged]
    s.message = _clip(problem, 1024)
    if observations.generation is not None:
        s.observedGeneration = observations.generation
    notes += _condition_events(transitions)
    return Decision(s, tuple(actions + notes), blocked=True)


# ---------------------------------------------------------------- reconcile steps, in order
def _reconcile_requests(t: _Tick) -> _Outcome:
    """A promote, retry or abort request is an annotation value; it acts once, when it is new."""
    s = t.status
    promote, retry, abort = _short(t.obs.promote_request), _short(t.obs.retry_request), _short(t.obs.abort_request)
    if promote is not None and promote != s.lastPromoteRequest:
        t.promote, s.lastPromoteRequest = True, promote
    if retry is not None and retry != s.lastRetryRequest:
        t.retry, s.lastRetryRequest = True, retry
    if abort is not None and abort != s.lastAbortRequest:
        t.abort, s.lastAbortRequest = True, abort
    return None


def _reconcile_revision(t: _Tick) -> _Outcome:
    """A new revision starts when spec.model changes or a retry is asked for; a new strategy restarts the steps."""
    s = t.status
    wanted = ModelRef.of(t.spec.model)
    current = s.canary or s.stable
    if t.obs.hold is not None and (current is None or ModelRef.of(current.model) != wanted):
        t.held = True  # no new revision (and no Superseded canary) until the new model resolves
    elif current is None:
        _start_revision(t, "the first revision of this Rollout")
    elif ModelRef.of(current.model) != wanted:
        _model_changed(t, wanted)
    elif t.retry and s.phase in ("RolledBack", "Failed"):
        t.retry_used = True
        _start_revision(t, f"retry requested ({RETRY_ANNOTATION}={s.lastRetryRequest})")
    elif _rolling(s) is not None and s.strategyHash != _strategy_hash(t.spec):
        _restart_steps(t)
    return None


def _reconcile_abort(t: _Tick) -> _Outcome:
    """An abort request rolls the canary in flight back at once: all traffic on the stable, like a matching alert."""
    s = t.status
    if not t.abort or s.canary is None or _rolling(s) is not s.canary:
        return None  # nothing to abort (or a first revision with no stable to go back to): _note_ignored_requests says so
    t.abort_used = True
    _finish_rolling(t, "RolledBack", f"aborted by request ({ABORT_ANNOTATION}={s.lastAbortRequest})")
    return "settled"


def _reconcile_alerts(t: _Tick) -> _Outcome:
    """A new matching alert rolls the revision in flight back at once; each (fingerprint, startsAt) acts once."""
    s = t.status
    new = sorted((a for a in t.obs.alerts if not _alert_handled(s, a)), key=lambda a: (a.starts_at, a.fingerprint, a.name))
    if not new:
        return None
    _remember_alerts(s, new)
    rolling = _rolling(s)
    if rolling is None:
        return None
    relevant = _relevant_alerts(t, rolling, new)
    if not relevant:
        return None
    reason = _alert_reason(relevant[0])
    if s.canary is None:
        t.event("Warning", "AlertWithoutStable", f"{reason}; revision {rolling.revision} is the first, there is no stable revision to roll back to")
        return None
    _finish_rolling(t, "RolledBack", reason)
    return "settled"


def _relevant_alerts(t: _Tick, rolling: ServedRevision, new: list[Alert]) -> list[Alert]:
    """The new alerts about the revision in flight: not naming another revision, not firing since before it started."""
    started = parse_ts(rolling.startedAt) if rolling.startedAt else None
    relevant = []
    for a in new:
        other = _other_revision(a, rolling.revision)
        if other is not None:
            t.event("Normal", "AlertIgnored", f"alert {a.name} (fingerprint {a.fingerprint}) is about revision {other}, "
                                              f"not revision {rolling.revision} in flight")
        elif started is not None and a.starts_at < started:
            t.event("Normal", "AlertIgnored", f"alert {a.name} (fingerprint {a.fingerprint}) has been firing since {ts(a.starts_at)}, "
                                              f"before revision {rolling.revision} started at {rolling.startedAt}: it is not about this revision")
        else:
            relevant.append(a)
    return relevant


def _alert_reason(first: Alert) -> str:
    labels = ", ".join(f"{k}={json.dumps(v)}" for k, v in first.labels)
    return (f"alert {first.name} (fingerprint {first.fingerprint}, firing since {ts(first.starts_at)}) matched spec.rollback.alerts"
            + (f" {{{labels}}}" if labels else "") + (f": {first.summary}" if first.summary else ""))


def _reconcile_unrecorded(t: _Tick) -> _Outcome:
    """A rollback already carried out but not yet in status (its write failed) is decided again, never reversed."""
    u, rolling = t.obs.unrecorded, _rolling(t.status)
    if u is None or rolling is None or rolling.revision != u.revision or t.status.canary is None:
        return None
    _finish_rolling(t, u.outcome, u.reason)
    return "settled"


def _reconcile_keep_warm(t: _Tick) -> _Outcome:
    """After a promotion the previous stable keeps running for strategy.keepWarm, then it is let go."""
    s = t.status
    prev = s.previousStable
    if prev is not None and (prev.keepWarmUntil is None or t.now > parse_ts(prev.keepWarmUntil)):  # never at the instant of promotion
        s.previousStable = None
        t.event("Normal", "KeepWarmOver", f"revision {prev.revision} ({_label(prev)}) was kept warm for spec.strategy.keepWarm "
                                          f"{t.spec.strategy.keepWarm} after the last promotion; deleting its InferenceService")
    return None


def _reconcile_finished(t: _Tick) -> _Outcome:
    """Promoted, RolledBack and Failed wait for a new spec.model or a retry (handled above)."""
    return "settled" if t.status.phase in FINISHED else None


def _reconcile_analysis(t: _Tick) -> _Outcome:
    """Count new measurements into the current analysis run; a failed run rolls back (unless that is switched off)."""
    names = _run_metrics(t)
    if not names:
        return None
    s = t.status
    started = parse_ts(s.currentStepStartedAt) if s.currentStepStartedAt else t.now
    results = {r.metric: r for r in s.lastAnalysis}
    where = _where(t, s.currentStepIndex)
    for name in names:
        metric = _metric(t.spec, name)
        if metric is None:
            results[name] = verdicts.undefined(name, where)
            continue
        result = results.get(name) or MeasurementResult(metric=name, phase="Running")
        for m in sorted((m for m in t.obs.measurements if m.metric == name), key=lambda m: (m.measured_at, m.phase, m.value or 0.0)):
            last = parse_ts(result.measuredAt) if result.measuredAt else started
            if max(last, started) < m.measured_at <= t.now:
                result = verdicts.record(metric, result, m)
        results[name] = result
    s.lastAnalysis = [results[n] for n in names]
    failed = [r for r in s.lastAnalysis if r.phase == "Failed"]
    if failed and t.spec.rollback.onAnalysisFailure:
        _finish_rolling(t, "RolledBack", f"analysis at {where} failed: " + "; ".join(f"{r.metric}: {r.message}" for r in failed))
        return "settled"
    return None


def _reconcile_experiment(t: _Tick) -> _Outcome:
    """On an experiment step: start counting once the canary is Ready and the split is seen in place, record counts
    read since (one look each), and act on a final verdict: better or a promoting no-decision lets the step end,
    worse (with spec.rollback.onAnalysisFailure) or a rolling-back no-decision rolls back, the rest pause."""
    found = _experiment_step(t)
    if found is None:
        return None
    idx, step = found
    s = t.status
    assert s.canary is not None
    e = s.experiment
    if e is None or e.stepIndex != idx or e.revision != s.canary.revision:
        e = s.experiment = _fresh_experiment(idx, s.canary.revision, step)
    where = _where(t, idx)
    if e.startedAt is None:
        if _not_ready(t, s.canary, "CanaryNotReady") is None and _traffic_not_applied(t, where) is None:
            e.startedAt = ts(t.now)
        return None
    got = t.obs.experiment
    started = parse_ts(e.startedAt)
    if (got is None or e.outcome not in _EXPERIMENT_OPEN or got.since != started or not got.at <= t.now
            or (e.lastLookAt is not None and got.at <= parse_ts(e.lastLookAt))):
        return None
    e.lastLookAt, e.looks = ts(got.at), e.looks + 1
    if isinstance(got, ExperimentUnknown):
        e.countsError = _clip(got.message, 1024)
        return None
    e.countsError = None
    verdict = sequential.decide(sequential.Counts(got.control, got.candidate), _experiment_spec(step), (got.at - started).total_seconds())
    _record_look(e, verdict)
    rev = f"revision {s.revision} ({_label(s.canary)})"
    outcome = verdict.outcome
    if outcome == "better" or (outcome == "no-decision" and step.onNoDecision == "promote"):
        e.action = "next-step"
        t.event("Normal", "ExperimentBetter" if outcome == "better" else "ExperimentNoDecision",
                f"{rev} at {where}: {verdict.reason}; going on to the next step")
    elif outcome == "worse" and not t.spec.rollback.onAnalysisFailure:
        e.action = "pause"
        t.event("Warning", "ExperimentWorse", f"{rev} at {where}: {verdict.reason}; automatic rollback is off "
                                              "(spec.rollback.onAnalysisFailure: false): paused")
    elif outcome in ("worse", "no-decision") and (outcome == "worse" or step.onNoDecision == "rollback"):
        e.action = "rollback"
        _finish_rolling(t, "RolledBack", f"experiment at {where}: {verdict.reason}")
        return "settled"
    elif outcome in ("no-decision", "sample-ratio-mismatch"):
        e.action = "pause"
        t.event("Warning", "SampleRatioMismatch" if outcome == "sample-ratio-mismatch" else "ExperimentNoDecision",
                f"{rev} at {where}: {verdict.reason}; paused: promote ({PROMOTE_ANNOTATION}) goes on to the next step, "
                f"abort ({ABORT_ANNOTATION}) rolls back")
    return None


def _reconcile_spec_paused(t: _Tick) -> _Outcome:
    if not t.spec.paused:
        return None
    return _Wait("pause", "PausedBySpec", f"spec.paused is true: holding at {_where(t, t.status.currentStepIndex)} until it is set back to false",
                 event_driven=True)


def _reconcile_first_revision(t: _Tick) -> _Outcome:
    """The first revision has no stable to compare against: it is served directly and promoted once Ready."""
    s = t.status
    rev = s.stable
    if s.canary is not None or rev is None or rev.promotedAt is not None:
        return None
    not_ready = _not_ready(t, rev, "StableNotReady")
    if not_ready is not None:
        return not_ready
    if not _lasted(t):
        return _Wait("work", "StableReady", f"revision {rev.revision} ({_label(rev)}) is Ready")
    rev.promotedAt = ts(t.now)
    s.phase, s.currentStepIndex, s.currentStepStartedAt, s.heldSince = "Promoted", len(t.spec.strategy.steps), ts(t.now), None
    _record(t, rev, "Promoted", "first revision: nothing to compare against, served directly once Ready")
    t.event("Normal", "Promoted", f"revision {rev.revision} ({_label(rev)}) is Ready and serves all traffic (first revision, no canary steps)")
    return "settled"


def _reconcile_analysis_pause(t: _Tick) -> _Outcome:
    """No data or too many errors pause the Rollout until measurements return values; never a rollback."""
    by_phase = {p: [r for r in t.status.lastAnalysis if r.phase == p] for p in ("Failed", "Inconclusive", "Error")}
    if not _run_metrics(t) or not any(by_phase.values()):
        return None
    where = _where(t, t.status.currentStepIndex)
    if by_phase["Failed"]:  # only reached with spec.rollback.onAnalysisFailure: false
        return _Wait("pause", "AnalysisFailed", f"analysis at {where} failed: {_metric_notes(by_phase['Failed'])}; automatic rollback is off "
                                                "(spec.rollback.onAnalysisFailure: false): set it to true to roll back, or change spec.model")
    if by_phase["Inconclusive"]:
        return _Wait("stuck", "AnalysisInconclusive", f"analysis at {where} has no data: {_metric_notes(by_phase['Inconclusive'])}; "
                                                      "paused until the query returns data (no data is neither a success nor a failure)")
    return _Wait("stuck", "AnalysisError", f"analysis at {where} cannot measure: {_metric_notes(by_phase['Error'])}; "
                                           "paused until Prometheus answers")


def _reconcile_step(t: _Tick) -> _Outcome:
    """Move to the next step when the current one is done (never at the instant it began) or promoted by request."""
    view = _evaluate(t)
    by_request = t.promote and _on_pause_step(t)
    if by_request or (view.done and _lasted(t)):
        t.promote_used = t.promote_used or by_request
        _advance(t, by_request)
        if t.status.phase in FINISHED:
            return "settled"
        view = _evaluate(t)
    return view.wait


_RECONCILERS = (
    _reconcile_keep_warm,  # first: it depends only on the clock, so a call that an alert or abort settles must not skip it
    _reconcile_requests,
    _reconcile_revision,
    _reconcile_alerts,
    _reconcile_unrecorded,  # after the alerts: a resent alert is remembered on the call that finally records the rollback
    _reconcile_abort,  # after the alerts, so new alerts are remembered on the call an abort settles
    _reconcile_finished,
    _reconcile_analysis,
    _reconcile_experiment,  # before spec.paused, like the analysis: counts already read are recorded, a worse canary rolled back
    _reconcile_spec_paused,
    _reconcile_first_revision,
    _reconcile_analysis_pause,
    _reconcile_step,
)


def _reconcile_deadline(t: _Tick, outcome: _Outcome) -> None:
    """Waiting on the outside (hold) or on evidence that does not come (stuck) for longer than spec.progressDeadline
    fails the revision, naming the step: all traffic goes back to the stable."""
    s = t.status
    if not isinstance(outcome, _Wait):
        return
    if outcome.kind not in ("hold", "stuck") or s.phase not in ACTIVE:
        s.heldSince = None
        return
    since = parse_ts(s.heldSince) if s.heldSince else t.now
    s.heldSince = ts(since)
    if t.now - since > parse_duration(t.spec.progressDeadline):
        _finish_rolling(t, "Failed", f"no progress for spec.progressDeadline {t.spec.progressDeadline}: {outcome.message}")


def _reconcile_serving(t: _Tick) -> None:
    """Level-triggered actions, repeated on every call: what should run, where traffic goes, what to measure, what to delete."""
    s = t.status
    keep: set[int] = set()
    canary = s.canary if s.canary is not None and s.phase in ACTIVE else None
    sides: tuple[tuple[Side, ServedRevision | None], ...] = (("stable", s.stable), ("canary", canary))
    for side, rev in sides:
        if rev is not None:
            t.actions.append(EnsureInferenceService(side, rev.revision, ModelRef.of(rev.model)))
            keep.add(rev.revision)
    if s.stable is not None:
        ready = canary is not None and (found := _isvc(t.obs, canary.revision)) is not None and found.ready
        # Never a route to a canary that is not Ready: no share, no mirror, no backend (gateways drop a whole route
        # whose backend has no endpoints; Traefik answers 404 for all of it). Status keeps the step's weight, and the
        # step holds on CanaryNotReady until it is Ready again or spec.progressDeadline fails it.
        t.actions.append(SetTraffic(s.stable.revision, canary.revision, s.canaryWeight, s.mirrorPercent, _experiment_buckets(t))
                         if canary is not None and ready else SetTraffic(s.stable.revision, None, 0, 0))
    measure = _due_measurements(t)
    if measure is not None:
        t.actions.append(measure)
    sample = _due_split(t)
    if sample is not None:
        t.actions.append(sample)
    counts = _due_experiment(t)
    if counts is not None:
        t.actions.append(counts)
    if s.previousStable is not None:
        keep.add(s.previousStable.revision)
    stable = f"revision {s.stable.revision}" if s.stable else "none"
    for revision in sorted({i.revision for i in t.obs.inference_services} - keep):
        t.actions.append(RemoveInferenceService(revision, f"revision {revision} is not served any more (stable: {stable}; no canary or kept-warm revision by that number)"))


def _summarise(t: _Tick, outcome: _Outcome) -> None:
    """Phase, conditions (the references', Ready, Progressing, Analysis), message and kubectl columns from what this call decided."""
    s = t.status
    wait = outcome if isinstance(outcome, _Wait) else None
    if s.phase not in FINISHED:
        s.phase = _active_phase(s, wait)
    progressing = _progressing(t, wait)
    s.message = _clip(progressing.message)
    if t.held:
        s.message = _clip(f"{ModelRef.of(t.spec.model).label()} is not served yet: {t.obs.hold}. Until then: {progressing.message}")
    s.stableVersion, s.canaryVersion = _label(s.stable), _label(s.canary)
    if t.obs.generation is not None:
        s.observedGeneration = t.obs.generation
    wanted = [*[c for c in t.obs.references if c.type != READY], _ready(s), progressing, *_kstatus(s, progressing)]
    wanted += [_analysis_condition(s)] if s.lastAnalysis else []
    current = [c.model_dump(exclude_none=True) for c in s.conditions]
    merged, transitions = merge(current, wanted, t.obs.generation, ts(t.now))
    s.conditions = [Condition.model_validate(c) for c in merged]
    _transition_events(t, [tr for tr in transitions if tr.cond.type not in QUIET])
    _note_ignored_requests(t)


def _kstatus(s: RolloutStatus, progressing: Cond) -> list[Cond]:
    """Reconciling while a revision is in flight (Flux and `kstatus` wait on it), Stalled once it ended badly (a person
    must change spec.model or ask for a retry). Both always present, True or False, with the phase's reason."""
    active = s.phase in ACTIVE
    stalled = s.phase in ("RolledBack", "Failed")
    return [Cond(RECONCILING, "True" if active else "False", progressing.reason if active else s.phase,
                 progressing.message if active else f"nothing in flight: {s.phase}"),
            Cond(STALLED, "True" if stalled else "False", s.phase if stalled else "NotStalled",
                 (s.rollbackReason or s.message) if stalled else "")]


def _ready(s: RolloutStatus) -> Cond:
    if s.stable is not None and s.stable.promotedAt is not None:
        return Cond(READY, "True", "Serving", f"revision {s.stable.revision} ({s.stableVersion}) serves "
                                              f"{s.stableWeight}% of traffic" + (f", canary {s.canaryVersion} {s.canaryWeight}%" if s.canary else ""))
    return Cond(READY, "False", "NotServing", s.message or "no revision serves traffic yet")


def _transition_events(t: _Tick, transitions: list[Transition]) -> None:
    t.notes.extend(_condition_events(transitions))


def _condition_events(transitions: list[Transition]) -> list[Action]:
    """An Event per condition whose status changed, with the condition's reason (as for the other kinds)."""
    return [EmitEvent("Normal" if tr.cond.status == "True" else "Warning", tr.cond.reason, _clip(f"{tr.cond.type}: {tr.cond.message}"))
            for tr in transitions]


def _ordered(t: _Tick) -> list[Action]:
    """Traffic first of all when the revision in flight was just taken off (RolledBack, Failed): a rollback costs one
    write and nothing can delay it; otherwise InferenceServices first, so a route never points at a missing backend."""
    if t.status.phase in ("RolledBack", "Failed"):
        return [a for a in t.actions if isinstance(a, SetTraffic)] + [a for a in t.actions if not isinstance(a, SetTraffic)]
    return list(t.actions)


def _next_look(t: _Tick, busy: bool) -> datetime | None:
    """When to look again without an event: now when busy, else the first clock-driven change (a kept-warm revision
    to let go, a progress deadline while waiting on an event); None when only an event can change anything."""
    s = t.status
    times = [t.now] if busy else []
    if s.previousStable is not None and s.previousStable.keepWarmUntil is not None:
        times.append(parse_ts(s.previousStable.keepWarmUntil) + timedelta(seconds=1))
    if s.phase in ACTIVE and s.heldSince is not None:
        times.append(parse_ts(s.heldSince) + parse_duration(t.spec.progressDeadline) + timedelta(seconds=1))
    return min(times) if times else None


def _busy(t: _Tick, outcome: _Outcome) -> bool:
    """Time-driven work is under way (steps, pauses, measurements): look again soon. Waiting on an event is not."""
    s = t.status
    if s.phase not in ACTIVE or t.spec.paused:
        return False
    return not (isinstance(outcome, _Wait) and outcome.event_driven)


# ---------------------------------------------------------------- transitions
def _start_revision(t: _Tick, why: str) -> None:
    s = t.status
    s.revision += 1
    rev = ServedRevision(revision=s.revision, model=t.spec.model.model_copy(deep=True), startedAt=ts(t.now))
    if s.stable is None or s.stable.promotedAt is None:
        s.stable, s.canary = rev, None
        message = f"revision {rev.revision} ({_label(rev)}): {why}; no stable revision to compare against, so it is served directly once Ready"
    else:
        s.canary = rev
        message = f"revision {rev.revision}: canary {_label(rev)} next to stable revision {s.stable.revision} ({_label(s.stable)}); {why}"
    _reset_progress(t, "Pending")
    s.rollbackReason = None
    t.event("Normal", "RevisionStarted", message)


def _model_changed(t: _Tick, wanted: ModelRef) -> None:
    """spec.model changed: supersede what is in flight, then start a revision (or go back to the stable)."""
    s = t.status
    rolling = _rolling(s)
    if rolling is not None:
        reason = f"spec.model changed to {wanted.label()} at {_where(t, s.currentStepIndex)}"
        _record(t, rolling, "Superseded", reason)
        t.event("Normal", "Superseded", f"revision {rolling.revision} ({_label(rolling)}) superseded: {reason}")
    stable = s.stable
    if stable is not None and stable.promotedAt is not None and ModelRef.of(stable.model) == wanted:
        s.canary, s.rollbackReason = None, None
        _reset_progress(t, "Promoted")
        t.event("Normal", "BackToStable", f"spec.model is the stable {_label(stable)} again; all traffic on stable revision {stable.revision}")
        return
    _start_revision(t, f"spec.model changed to {wanted.label()}")


def _restart_steps(t: _Tick) -> None:
    s = t.status
    _reset_progress(t, "Pending")
    t.event("Normal", "StrategyChanged", f"spec.strategy changed during revision {s.revision}: its steps start again from the beginning")


def _reset_progress(t: _Tick, phase: Literal["Pending", "Promoted"]) -> None:
    """Back to the start of the steps: no canary traffic, no mirror, a fresh clock and analysis."""
    s = t.status
    s.phase, s.currentStepIndex, s.currentStepStartedAt, s.heldSince = phase, None, ts(t.now), None
    s.canaryWeight, s.stableWeight, s.mirrorPercent = 0, 100, 0
    s.lastAnalysis, s.strategyHash, s.experiment = [], _strategy_hash(t.spec), None


def _advance(t: _Tick, by_request: bool) -> None:
    s = t.status
    idx = s.currentStepIndex
    nxt = (SHADOW if t.spec.strategy.shadow is not None else 0) if idx is None else idx + 1
    if nxt >= len(t.spec.strategy.steps):
        _promote(t)
        return
    s.currentStepIndex, s.currentStepStartedAt, s.heldSince = nxt, ts(t.now), None
    if nxt == SHADOW:
        s.canaryWeight, s.mirrorPercent = 0, _shadow_percent(t)
    else:
        s.mirrorPercent = 0
        step = t.spec.strategy.steps[nxt]
        s.canaryWeight = s.canaryWeight if step.setWeight is None else step.setWeight
        if step.experiment is not None and s.canary is not None:  # users by bucket, no share by weight; a fresh experiment
            s.canaryWeight, s.experiment = 0, _fresh_experiment(nxt, s.canary.revision, step.experiment)
    s.stableWeight = 100 - s.canaryWeight
    names = _run_metrics(t)
    if names:
        s.lastAnalysis = [MeasurementResult(metric=n, phase="Running", message="waiting for the first measurement") for n in names]
    promoted = f" (after promote request {PROMOTE_ANNOTATION}={s.lastPromoteRequest})" if by_request else ""
    t.event("Normal", "StepStarted", f"revision {s.revision}: {_where(t, nxt)}: {_what(t, nxt)}{promoted}")


def _promote(t: _Tick) -> None:
    s = t.status
    canary, old = s.canary, s.stable
    assert canary is not None and old is not None, "only a canary next to a stable is promoted through the steps"
    until = t.now + parse_duration(t.spec.strategy.keepWarm)
    old.keepWarmUntil = ts(until)
    canary.promotedAt = ts(t.now)
    s.previousStable, s.stable, s.canary = old, canary, None
    s.phase, s.currentStepIndex, s.currentStepStartedAt, s.heldSince = "Promoted", len(t.spec.strategy.steps), ts(t.now), None
    s.canaryWeight, s.stableWeight, s.mirrorPercent, s.rollbackReason = 0, 100, 0, None
    _record(t, canary, "Promoted", f"passed all {len(t.spec.strategy.steps)} steps of spec.strategy")
    t.event("Normal", "Promoted", f"revision {canary.revision} ({_label(canary)}) promoted and serves all traffic; previous stable "
                                  f"revision {old.revision} ({_label(old)}) kept warm until {ts(until)}")


def _finish_rolling(t: _Tick, outcome: Literal["RolledBack", "Failed"], reason: str) -> None:
    """End the revision in flight: all traffic back on the stable (when there is one), say why."""
    s = t.status
    rolling = _rolling(s)
    assert rolling is not None, "only a revision in flight is rolled back or failed"
    where = _where(t, s.currentStepIndex)
    _record(t, rolling, outcome, reason)
    s.phase, s.rollbackReason, s.heldSince = outcome, _clip(reason), None
    verb = "rolled back" if outcome == "RolledBack" else "failed"
    if s.canary is not None and s.stable is not None:
        s.canaryWeight, s.stableWeight, s.mirrorPercent = 0, 100, 0
        t.event("Warning", outcome, f"revision {rolling.revision} ({_label(rolling)}) {verb} at {where}: {reason}; "
                                    f"all traffic on stable revision {s.stable.revision} ({_label(s.stable)})")
    else:
        t.event("Warning", outcome, f"revision {rolling.revision} ({_label(rolling)}) {verb}: {reason}; there is no earlier revision to fall back to")


def _record(t: _Tick, rev: ServedRevision, outcome: Literal["Promoted", "RolledBack", "Failed", "Superseded"], reason: str) -> None:
    s = t.status
    entry = _history_entry(rev, outcome, reason, t.now)
    s.history = [*s.history, entry][-t.spec.revisionHistoryLimit:]
    t.notes.append(RecordHistory(entry))


def _history_entry(rev: ServedRevision, outcome: Literal["Promoted", "RolledBack", "Failed", "Superseded"], reason: str,
                   now: datetime) -> HistoryEntry:
    return HistoryEntry(
        revision=rev.revision,
        foundationModelVersion=rev.model.foundationModel.version or "",
        adapters=[f"{name}@{version}" if version else name for name, version in ModelRef.of(rev.model).adapters],
        outcome=outcome,
        reason=_clip(reason),
        startedAt=rev.startedAt,
        finishedAt=ts(now),
    )


# ---------------------------------------------------------------- the current step
def _evaluate(t: _Tick) -> _View:
    s = t.status
    idx = s.currentStepIndex
    if idx is None:
        return _pending_view(t)
    if idx == SHADOW:
        return _shadow_view(t)
    if idx >= len(t.spec.strategy.steps):
        return _View(True, _Wait("work", "StepsDone", "past the last of spec.strategy.steps"))
    step = t.spec.strategy.steps[idx]
    if step.pause is not None:
        return _pause_view(t, idx, step)
    not_ready = _not_ready(t, s.canary, "CanaryNotReady")
    if not_ready is not None:
        return _View(False, not_ready)
    if step.setWeight is not None:
        return _weight_view(t, idx, step.setWeight)
    if step.experiment is not None:
        return _experiment_view(t, idx, step.experiment)
    return _analysis_view(t, idx)


def _pending_view(t: _Tick) -> _View:
    not_ready = _not_ready(t, t.status.canary, "CanaryNotReady")
    if not_ready is not None:
        return _View(False, not_ready)
    return _View(True, _Wait("work", "CanaryReady", f"canary revision {t.status.revision} ({_label(t.status.canary)}) is Ready"))


def _shadow_view(t: _Tick) -> _View:
    s = t.status
    where = _where(t, SHADOW)
    shadow = t.spec.strategy.shadow
    held = _not_ready(t, s.canary, "CanaryNotReady") or _traffic_not_applied(t, where)
    if held is not None:
        return _View(False, held)
    if shadow is None:
        return _View(True, _Wait("work", "ShadowDone", "spec.strategy.shadow was removed"))
    until = _step_start(t) + parse_duration(shadow.duration)
    if t.now < until:
        return _View(False, _Wait("work", "Shadowing", f"{where}: mirroring {shadow.mirrorPercent}% of live traffic to the canary until {ts(until)}"
                                                      + (f"; analysis: {_metric_notes(s.lastAnalysis)}" if s.lastAnalysis else "")))
    if shadow.analysis and verdicts.run_phase(s.lastAnalysis) != "Successful":
        return _View(False, _Wait("work", "Analysing", f"{where}: waiting for the shadow analysis: {_metric_notes(s.lastAnalysis)}"))
    return _View(True, _Wait("work", "ShadowDone", f"{where}: done"))


def _pause_view(t: _Tick, idx: int, step: Step) -> _View:
    assert step.pause is not None
    where = _where(t, idx)
    if step.pause.untilPromoted or step.pause.duration is None:
        return _View(False, _Wait("pause", "WaitingForPromotion", f"{where}: waiting for a person to promote "
                                                                  f"(set annotation {PROMOTE_ANNOTATION} to a new value)"))
    until = _step_start(t) + parse_duration(step.pause.duration)
    if t.now < until:
        return _View(False, _Wait("pause", "PauseStep", f"{where}: paused until {ts(until)}"))
    return _View(True, _Wait("work", "PauseOver", f"{where}: pause over"))


def _weight_view(t: _Tick, idx: int, weight: int) -> _View:
    where = _where(t, idx)
    held = _traffic_not_applied(t, where) or _split_off(t, where, weight)
    if held is not None:
        return _View(False, held)
    return _View(True, _Wait("work", "WeightSet", f"{where}: {weight}% of live traffic on canary {_label(t.status.canary)}"))


def _analysis_view(t: _Tick, idx: int) -> _View:
    notes = f"{_where(t, idx)}: {_metric_notes(t.status.lastAnalysis)}"
    if verdicts.run_phase(t.status.lastAnalysis) == "Successful":
        return _View(True, _Wait("work", "AnalysisSuccessful", notes))
    return _View(False, _Wait("work", "Analysing", notes))


def _experiment_view(t: _Tick, idx: int, step: ExperimentStep) -> _View:
    where = _where(t, idx)
    held = _traffic_not_applied(t, where)
    if held is not None:
        return _View(False, held)
    e = t.status.experiment
    if e is None or e.startedAt is None:
        return _View(False, _Wait("work", "ExperimentStarting", f"{where}: starting the experiment"))
    if e.action == "next-step":
        return _View(True, _Wait("work", "ExperimentDone", f"{where}: {e.reason}"))
    if e.action == "pause":
        reason = {"worse": "ExperimentWorse", "sample-ratio-mismatch": "SampleRatioMismatch"}.get(e.outcome, "ExperimentNoDecision")
        return _View(False, _Wait("pause", reason, f"{where}: {e.reason}; waiting for a person: promote (set annotation "
                                                   f"{PROMOTE_ANNOTATION} to a new value) goes on to the next step, abort "
                                                   f"({ABORT_ANNOTATION}) rolls back"))
    if e.countsError is not None:
        return _View(False, _Wait("stuck", "ExperimentCountsUnknown", f"{where}: the experiment's counts cannot be read ({e.countsError}); "
                                                                      "holding until they can: no counts is neither better nor worse"))
    now = e.reason or f"waiting for the first counts (every {step.interval})"
    return _View(False, _Wait("work", "Experimenting", f"{where}: {step.candidatePercent}% of users on canary {_label(t.status.canary)} "
                                                       f"since {e.startedAt}; {now}"))


def _not_ready(t: _Tick, rev: ServedRevision | None, reason: str) -> _Wait | None:
    if rev is None:
        return None
    found = _isvc(t.obs, rev.revision)
    if found is not None and found.ready:
        return None
    why = "not found" if found is None else (found.message or "not Ready")
    return _Wait("hold", reason, f"{_where(t, t.status.currentStepIndex)}: waiting for the InferenceService of revision {rev.revision} "
                                 f"({_label(rev)}) to become Ready: {why}", event_driven=True)


def _traffic_not_applied(t: _Tick, where: str) -> _Wait | None:
    """The traffic object must show what was asked for; 'unknown' (the provider cannot tell) passes, as in Argo Rollouts."""
    seen, s = t.obs.traffic, t.status
    if seen == "unknown":
        return None
    buckets = _experiment_buckets(t)
    revision_ok = seen.canary_revision is None or (s.canaryWeight == 0 and s.mirrorPercent == 0) or (
        s.canary is not None and seen.canary_revision == s.canary.revision)
    if buckets is not None:  # the bucket route must point at this canary
        revision_ok = s.canary is not None and seen.canary_revision == s.canary.revision
    if seen.canary_weight == s.canaryWeight and seen.mirror_percent == s.mirrorPercent and revision_ok and seen.buckets == buckets:
        return None
    found = f"{seen.canary_weight}% and mirror {seen.mirror_percent}%" + (f" to revision {seen.canary_revision}" if seen.canary_revision else "")
    found += f", user buckets {seen.buckets[0]}..{seen.buckets[1]} by header" if seen.buckets else ""
    wanted = f", user buckets {buckets[0]}..{buckets[1]} (header {naming.BUCKET_HEADER})" if buckets else ""
    return _Wait("hold", "TrafficNotApplied", f"{where}: waiting for the traffic provider to route {s.canaryWeight}% and mirror "
                                              f"{s.mirrorPercent}%{wanted} to canary revision {s.revision} (found {found})")


def _split_off(t: _Tick, where: str, weight: int) -> _Wait | None:
    """Requests counted since this step began must be within 3 binomial sigma of the weight. No sample yet (the
    controller takes one when asked: SampleSplit) or one from before the step began is not evidence: the step waits.
    A split that cannot be read is not a pass either: the Rollout pauses (stuck) until it can, or the deadline fails it.

    Not at 0% and 100%: there the binomial sigma is 0, so the few requests counted on the other side at the window's
    start (in flight at the switch, or scraped late: the counters are read at Prometheus' scrape times) would hold
    the step for ever; the traffic object's own weights (TrafficNotApplied) are the check there."""
    if not _split_checked(weight):
        return None
    sample = t.obs.split
    if isinstance(sample, SplitUnknown):
        if not sample.checkable:  # no Prometheus at all: the traffic provider's word is all there is (as in Argo Rollouts)
            return None
        return _Wait("stuck", "SplitUnknown", f"{where}: the split observed at the backends cannot be read ({sample.message}); "
                                              "holding until it can: a split nobody checked is not a pass")
    if sample is None or sample.since < _step_start(t):
        return _Wait("work", "CheckingSplit", f"{where}: {weight}% of live traffic on canary {_label(t.status.canary)}; "
                                              "checking the split observed at the backends")
    if verdicts.split_within_sigma(sample.canary_requests, sample.total_requests, weight):
        return None
    share = 100 * sample.canary_requests / sample.total_requests
    return _Wait("hold", "SplitOutOfBounds", f"{where}: {sample.canary_requests} of {sample.total_requests} requests ({share:.1f}%) "
                                             f"reached the canary since {ts(sample.since)}, more than 3 sigma from {weight}%; holding until the split matches")


# ---------------------------------------------------------------- small helpers
def _rolling(s: RolloutStatus) -> ServedRevision | None:
    """The revision in flight: the canary, or a first revision not yet promoted."""
    if s.phase not in ACTIVE:
        return None
    if s.canary is not None:
        return s.canary
    if s.stable is not None and s.stable.promotedAt is None:
        return s.stable
    return None


def _lasted(t: _Tick) -> bool:
    """A step never ends at the instant it began: replaying one call's observations cannot move twice."""
    return t.now > _step_start(t)


def _step_start(t: _Tick) -> datetime:
    started = t.status.currentStepStartedAt
    return parse_ts(started) if started else t.now


def _on_pause_step(t: _Tick) -> bool:
    idx, steps = t.status.currentStepIndex, t.spec.strategy.steps
    if t.status.canary is None or t.status.phase not in ACTIVE or idx is None or not 0 <= idx < len(steps):
        return False
    e = t.status.experiment
    paused_experiment = steps[idx].experiment is not None and e is not None and e.stepIndex == idx and e.action == "pause"
    return steps[idx].pause is not None or paused_experiment


def _run_metrics(t: _Tick) -> tuple[str, ...]:
    """Metric names of the analysis the current step runs (shadow or an analysis step), if any."""
    s, strategy = t.status, t.spec.strategy
    idx = s.currentStepIndex
    if s.canary is None or s.phase not in ACTIVE or idx is None:
        return ()
    if idx == SHADOW:
        return tuple(strategy.shadow.analysis) if strategy.shadow is not None else ()
    if idx < len(strategy.steps) and (analysis := strategy.steps[idx].analysis) is not None:
        return tuple(analysis.metrics)
    return ()


def _due_measurements(t: _Tick) -> Measure | None:
    """Metrics of the current analysis that are not done and whose interval has passed since their last measurement."""
    s = t.status
    if s.phase not in ACTIVE or t.spec.paused or s.canary is None or verdicts.run_phase(s.lastAnalysis) == "Failed":
        return None
    names = set(_run_metrics(t))
    due: list[str] = []
    for r in s.lastAnalysis:
        metric = _metric(t.spec, r.metric)
        if r.metric not in names or metric is None or r.phase in verdicts.DONE:
            continue
        if r.measuredAt is None or t.now >= parse_ts(r.measuredAt) + parse_duration(metric.interval):
            due.append(r.metric)
    if not due:
        return None
    return Measure(tuple(due), s.stable.revision if s.stable else None, s.canary.revision, _where(t, s.currentStepIndex))


def _due_split(t: _Tick) -> SampleSplit | None:
    """On a weight step strictly between 0% and 100%, count what each backend answered since the step began."""
    s, steps = t.status, t.spec.strategy.steps
    idx = s.currentStepIndex
    if (s.phase not in ACTIVE or s.canary is None or s.stable is None or idx is None or not 0 <= idx < len(steps)
            or (weight := steps[idx].setWeight) is None or not _split_checked(weight)):
        return None
    return SampleSplit(s.stable.revision, s.canary.revision, _step_start(t))


def _split_checked(weight: int) -> bool:
    return 0 < weight < 100


# ---------------------------------------------------------------- experiments
_EXPERIMENT_OPEN = ("pending", "continue")  # outcomes after which the experiment still looks


def _experiment_step(t: _Tick) -> tuple[int, ExperimentStep] | None:
    """The current step when it is an experiment and a canary is in flight."""
    s, steps = t.status, t.spec.strategy.steps
    idx = s.currentStepIndex
    if s.canary is None or s.phase not in ACTIVE or idx is None or not 0 <= idx < len(steps):
        return None
    step = steps[idx].experiment
    return None if step is None else (idx, step)


def _experiment_buckets(t: _Tick) -> tuple[int, int] | None:
    """The user buckets routed to the canary by header on an experiment step (0..candidatePercent-1), else None."""
    found = _experiment_step(t)
    return None if found is None else (0, found[1].candidatePercent - 1)


def _fresh_experiment(idx: int, revision: int, step: ExperimentStep) -> ExperimentStatus:
    return ExperimentStatus(stepIndex=idx, revision=revision, candidatePercent=step.candidatePercent, success=step.success,
                            reason="waiting for the canary and the split")


def _experiment_spec(step: ExperimentStep) -> sequential.ExperimentSpec:
    return sequential.ExperimentSpec(
        minimum_effect=step.minimumEffect, max_duration_seconds=parse_duration(step.maxDuration).total_seconds(), alpha=step.alpha,
        candidate_share=step.candidatePercent / 100, alpha_srm=step.sampleRatioAlpha, min_exposures=step.minExposures,
        max_exposures=step.maxExposures, on_no_decision=step.onNoDecision)


def _due_experiment(t: _Tick) -> SampleExperiment | None:
    """On an experiment step still open, once its split is in place: count both arms every `interval` (the first look one
    interval after the start), cumulative since the start. Not while spec.paused, the canary is not Ready or the split is off."""
    found = _experiment_step(t)
    s, e = t.status, t.status.experiment
    if found is None or t.spec.paused or s.stable is None or s.canary is None or e is None or e.startedAt is None:
        return None
    idx, step = found
    if e.stepIndex != idx or e.outcome not in _EXPERIMENT_OPEN or e.action is not None:
        return None
    if _not_ready(t, s.canary, "CanaryNotReady") is not None or _traffic_not_applied(t, _where(t, idx)) is not None:
        return None
    if t.now < parse_ts(e.lastLookAt or e.startedAt) + parse_duration(step.interval):
        return None
    return SampleExperiment(s.stable.revision, s.canary.revision, step.success, parse_ts(e.startedAt))


def _record_look(e: ExperimentStatus, d: sequential.Decision) -> None:
    """One look's numbers into status: rounded, finite (statistics past a float's range are capped)."""
    c, r, n = d.comparison, d.sample_ratio, d.counts

    def arm(a: sequential.Arm) -> ExperimentArm:
        return ExperimentArm(exposures=a.exposures, successes=a.successes, rate=round(a.rate, 6))

    e.outcome, e.reason, e.elapsedSeconds = d.outcome, _clip(d.reason), round(max(d.elapsed_seconds, 0.0), 3)
    e.control, e.candidate = arm(n.control), arm(n.candidate)
    e.difference, e.confidenceLevel = round(c.difference, 6), round(1 - c.alpha, 6)
    e.confidenceSequence = Interval(lower=round(c.lower, 6), upper=round(c.upper, 6))
    e.lift = None if c.lift is None else round(c.lift, 4)
    e.liftInterval = (None if c.lift_lower is None or c.lift_upper is None
                      else Interval(lower=round(c.lift_lower, 4), upper=round(c.lift_upper, 4)))
    e.likelihoodRatio, e.threshold = _capped_exp(c.log_lambda), _sig(1 / c.alpha)
    e.sampleRatio = ExperimentSampleRatio(observedShare=round(r.observed_share, 6), expectedShare=round(r.expected_share, 6),
                                          bayesFactor=_capped_exp(r.log_bayes_factor), threshold=_capped_exp(r.log_threshold),
                                          mismatch=r.mismatch)


def _capped_exp(log: float) -> float:
    return _sig(math.exp(min(log, 709.0)))


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def _other_revision(alert: Alert, revision: int) -> str | None:
    """The revision an alert names through its `revision` label (the chart's rules keep it), when that
    is not `revision`; None when it names this revision or none at all (then it is about the Rollout).

    An alert on a rolled-back canary can start firing after the next revision started (a rule's `for`
    outlasts a fast analysis rollback); it must not roll the next revision back."""
    value = dict(alert.labels).get(naming.PROM_REVISION_LABEL, "")
    return value if value and value != str(revision) else None


def _alert_handled(s: RolloutStatus, alert: Alert) -> bool:
    """Handled when this fingerprint already fired at this startsAt or later (duplicates and late resends)."""
    return any(h.fingerprint == _short(alert.fingerprint) and parse_ts(h.startsAt) >= alert.starts_at for h in s.handledAlerts)


def _remember_alerts(s: RolloutStatus, alerts: list[Alert]) -> None:
    kept = {h.fingerprint: h for h in s.handledAlerts}
    for a in alerts:
        fingerprint = _short(a.fingerprint) or ""
        kept.pop(fingerprint, None)  # re-inserted last: the newest stay when the list is trimmed
        kept[fingerprint] = HandledAlert(fingerprint=fingerprint, startsAt=ts(a.starts_at), alertname=_short(a.name) or "")
    s.handledAlerts = list(kept.values())[-MAX_HANDLED_ALERTS:]


def _isvc(obs: Observations, revision: int) -> InferenceServiceState | None:
    return next((i for i in reversed(obs.inference_services) if i.revision == revision), None)


def _metric(spec: RolloutSpec, name: str) -> Metric | None:
    """The spec's metric of that name, else the built-in check (fmop.rollout.checks)."""
    return checks.resolve(spec, name)


def _metric_notes(results: list[MeasurementResult]) -> str:
    return "; ".join(f"{r.metric}: {r.message or r.phase}" for r in results)


def _shadow_percent(t: _Tick) -> int:
    return t.spec.strategy.shadow.mirrorPercent if t.spec.strategy.shadow is not None else 0


def _strategy_hash(spec: RolloutSpec) -> str:
    """Fingerprint of what the steps do (shadow and steps; not keepWarm): a change restarts them."""
    strategy = spec.strategy.model_dump(mode="json", exclude_none=True, include={"shadow", "steps"})
    return hashlib.sha256(json.dumps(strategy, sort_keys=True).encode()).hexdigest()[:16]


def _where(t: _Tick, idx: int | None) -> str:
    """The step in the words of the spec: spec.strategy.steps[2] (setWeight 25)."""
    steps = t.spec.strategy.steps
    if idx is None:
        return f"revision {t.status.revision}, before its first step"
    if idx == SHADOW:
        shadow = t.spec.strategy.shadow
        return f"spec.strategy.shadow (mirror {shadow.mirrorPercent}% for {shadow.duration})" if shadow else "spec.strategy.shadow"
    if idx >= len(steps):
        return "the end of spec.strategy.steps"
    step = steps[idx]
    if step.setWeight is not None:
        what = f"setWeight {step.setWeight}"
    elif step.pause is not None:
        what = f"pause {step.pause.duration}" if step.pause.duration else "pause untilPromoted"
    elif step.experiment is not None:
        what = f"experiment {step.experiment.candidatePercent}% of users"
    else:
        what = "analysis " + ", ".join(step.analysis.metrics if step.analysis else [])
    return f"spec.strategy.steps[{idx}] ({what})"


def _what(t: _Tick, idx: int) -> str:
    s = t.status
    if idx == SHADOW:
        return f"{s.mirrorPercent}% of live traffic mirrored to the canary, responses discarded"
    step = t.spec.strategy.steps[idx]
    if step.setWeight is not None:
        return f"{step.setWeight}% of live traffic to the canary"
    if step.pause is not None:
        return "paused until promoted" if step.pause.untilPromoted else f"paused for {step.pause.duration}"
    if step.experiment is not None:
        x = step.experiment
        return (f"user buckets 0..{x.candidatePercent - 1} of {naming.BUCKETS} (header {naming.BUCKET_HEADER}) to the canary, the rest to "
                f"the stable, until the test on '{x.success}' decides (alpha {x.alpha:g}, at most {x.maxDuration})")
    return f"measuring {', '.join(_run_metrics(t))}"


def _active_phase(s: RolloutStatus, wait: _Wait | None) -> Literal["Pending", "Shadowing", "Progressing", "Paused"]:
    if wait is not None and wait.kind in ("pause", "stuck"):
        return "Paused"
    if s.currentStepIndex is None:
        return "Pending"
    return "Shadowing" if s.currentStepIndex == SHADOW else "Progressing"


def _progressing(t: _Tick, wait: _Wait | None) -> Cond:
    s = t.status
    if s.phase == "Promoted":
        stable = f"revision {s.stable.revision} ({_label(s.stable)})" if s.stable else "the stable revision"
        warm = (f"; revision {s.previousStable.revision} kept warm until {s.previousStable.keepWarmUntil}" if s.previousStable else "")
        return Cond(PROGRESSING, "False", "Promoted", f"{stable} serves all traffic{warm}")
    if s.phase == "RolledBack":
        return Cond(PROGRESSING, "False", "RolledBack", s.rollbackReason or "rolled back")
    if s.phase == "Failed":
        return Cond(PROGRESSING, "False", "ProgressDeadlineExceeded", s.rollbackReason or "failed")
    if wait is None:
        return Cond(PROGRESSING, "True", "Progressing", f"revision {s.revision} at {_where(t, s.currentStepIndex)}")
    return Cond(PROGRESSING, "False" if wait.kind in ("pause", "stuck") else "True", wait.reason, wait.message)


def _analysis_condition(s: RolloutStatus) -> Cond:
    phase = verdicts.run_phase(s.lastAnalysis)
    status: Literal["True", "False", "Unknown"] = "True" if phase == "Successful" else "False" if phase == "Failed" else "Unknown"
    return Cond(ANALYSIS, status, phase, _metric_notes(s.lastAnalysis))


def _note_ignored_requests(t: _Tick) -> None:
    s = t.status
    if t.promote and not t.promote_used:
        t.event("Normal", "PromoteIgnored", f"promote request {PROMOTE_ANNOTATION}={s.lastPromoteRequest} ignored: the Rollout is {s.phase} at "
                                            f"{_where(t, s.currentStepIndex)}; promote moves past a pause step only, and not while "
                                            "spec.paused is true. Set a new value to ask again")
    if t.abort and not t.abort_used:
        rolling = _rolling(s)
        why = (f"revision {rolling.revision} is the first, there is no stable revision to go back to" if rolling is not None
               else f"no canary is in flight (revision {s.revision} is {s.phase})")
        t.event("Normal", "AbortIgnored", f"abort request {ABORT_ANNOTATION}={s.lastAbortRequest} ignored: {why}; abort rolls back a canary "
                                          "in flight. Set a new value to ask again")
    if t.retry and not t.retry_used:
        t.event("Normal", "RetryIgnored", f"retry request {RETRY_ANNOTATION}={s.lastRetryRequest} ignored: revision {s.revision} is {s.phase}; "
                                          "retry restarts a RolledBack or Failed revision. Set a new value to ask again")


def _label(rev: ServedRevision | None) -> str | None:
    return None if rev is None else _clip(ModelRef.of(rev.model).label(), 256)


def _short(value: str | None) -> str | None:
    return None if value is None else value[:256]


def _clip(text: str, limit: int = 4096) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
