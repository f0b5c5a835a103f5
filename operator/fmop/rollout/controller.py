"""The I/O around the rollout engine: read what decide() needs, call it, carry out what it says.

One reconcile of one Rollout, the same whoever asks (the kopf daemon's tick, a watch event on one
of its InferenceServices, a spec edit, or the Alertmanager webhook with alerts in hand):

1. read the Rollout, the objects it references, its InferenceServices and its traffic object;
2. `decide(spec, status, observations, now)`; if it asks for measurements, take them and decide
   again with the results, so a measurement is counted in the same reconcile that took it;
3. carry out the level-triggered actions in order (InferenceServices, traffic, deletions): traffic
   first of all when the revision is rolled back, so a rollback costs one patch;
4. write status once, only when it changed, with the resourceVersion read in step 1 (a concurrent
   writer makes this a conflict, and the reconcile is tried again on fresh data);
5. post the Events and count the metrics of the transitions just written.

Reconciles of the same Rollout never overlap in this process (a lock per Rollout), so a webhook
rollback and a timer tick cannot decide from the same stale status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from kubernetes import client
from pydantic import ValidationError

from fmop import metrics
from fmop.api.rollout import Rollout, RolloutSpec, RolloutStatus
from fmop.assess import assess_rollout
from fmop.conditions import Cond, Transition, merge
from fmop.kinds import FOUNDATION_MODEL, INFERENCE_SERVICE, ROLLOUT, TASK_ADAPTER
from fmop.kube import Conflict, Kube, KubeError
from fmop.rollout import analysis, naming
from fmop.rollout.clock import parse_ts, ts
from fmop.rollout.engine import decide
from fmop.rollout.providers import kube as provider_io
from fmop.rollout.providers.kube import TrafficError
from fmop.rollout.providers import provider_for
from fmop.rollout.providers.base import RolloutRef, TrafficProvider
from fmop.rollout.serving import StorageError, observe_isvc, render_isvc, revision_uri, storage_uri
from fmop.rollout.types import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    Alert,
    Decision,
    EmitEvent,
    EnsureInferenceService,
    InferenceServiceState,
    Measure,
    Measurement,
    Observations,
    ObservedTraffic,
    RecordHistory,
    RemoveInferenceService,
    SetTraffic,
    SplitSample,
)

log = logging.getLogger("fmop.rollout")


# ---------------------------------------------------------------- what the controller needs from the outside
class Traffic(Protocol):
    """The traffic provider of a Rollout: route as asked, and tell what the traffic object says now."""

    def apply(self, ref: RolloutRef, spec: RolloutSpec, action: SetTraffic) -> None: ...

    def observe(self, ref: RolloutRef, spec: RolloutSpec) -> ObservedTraffic | Literal["unknown"]: ...


class Analysis(Protocol):
    """Prometheus: measurements of analysis metrics, and the split observed at the backends."""

    def measure(self, ref: RolloutRef, spec: RolloutSpec, action: Measure, now: datetime) -> tuple[Measurement, ...]: ...

    def split(self, ref: RolloutRef, spec: RolloutSpec, stable: int, canary: int, since: datetime, now: datetime) -> SplitSample | None: ...


class ProviderTraffic:
    """`Traffic` on a traffic provider: reads its objects once per reconcile, writes only what differs."""

    def __init__(self, api: client.ApiClient, provider: TrafficProvider) -> None:
        self.api, self.provider = api, provider
        self._found: list[dict[str, Any] | None] | None = None

    def observe(self, ref: RolloutRef, spec: RolloutSpec) -> ObservedTraffic | Literal["unknown"]:
        self._found = provider_io.read(self.api, self.provider, ref.namespace, self.provider.objects(ref, spec.trafficRouting))
        return self.provider.observe(self._found)

    def apply(self, ref: RolloutRef, spec: RolloutSpec, action: SetTraffic) -> None:
        objects = self.provider.render(ref, spec.trafficRouting, action)
        found = self._found
        if found is not None and len(found) == len(objects) and all(f is not None and contains(f, o) for f, o in zip(found, objects)):
            return  # as wanted already: an apply would write nothing
        provider_io.apply(self.api, self.provider, self.provider.objects(ref, spec.trafficRouting), objects)
        self._found = None


class PrometheusAnalysis:
    """`Analysis` on Prometheus' HTTP API (fmop.rollout.analysis); spec.analysis.prometheusAddress wins over the default."""

    def __init__(self, default_url: str) -> None:
        self.default_url = default_url

    def measure(self, ref: RolloutRef, spec: RolloutSpec, action: Measure, now: datetime) -> tuple[Measurement, ...]:
        return analysis.measure(action, spec, ref.namespace, ref.name, self.default_url, now)

    def split(self, ref: RolloutRef, spec: RolloutSpec, stable: int, canary: int, since: datetime, now: datetime) -> SplitSample | None:
        found = analysis.observed_split(spec.analysis.prometheusAddress or self.default_url, ref.namespace, ref.name, stable, canary, since, now)
        if isinstance(found, analysis.SplitUnknown):
            log.debug(f"Rollout {ref.namespace}/{ref.name}: {found.message}")
            return None  # no evidence either way; the analysis steps say whether Prometheus answers
        return found


def traffic_for(api: client.ApiClient) -> Callable[[RolloutSpec], Traffic]:
    """The Traffic of a Rollout's spec.trafficRouting.provider, fresh per reconcile."""
    return lambda spec: ProviderTraffic(api, provider_for(spec.trafficRouting))


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did: for logs, metrics and the webhook's answer."""

    result: Literal["changed", "unchanged", "gone", "blocked", "conflict"]
    phase: str = ""
    actions: tuple[str, ...] = ()
    traffic_at: float | None = None  # time.monotonic() when the traffic object was written, if it was
    message: str = ""
    busy: bool = False  # time-driven work is under way (steps, pauses, measurements): reconcile again soon
    rolled_back: bool = False  # this reconcile rolled the revision in flight back


@dataclass
class Controller:
    kube: Kube
    traffic_for: Callable[[RolloutSpec], Traffic]
    analysis: Analysis | None = None  # None: measurements come back as Error naming the missing Prometheus
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict, init=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, init=False)

    # ------------------------------------------------------------ entry point
    def reconcile(self, namespace: str, name: str, alerts: Iterable[Alert] = (), attempts: int = 3) -> Outcome:
        """Reconcile one Rollout now; alerts from the webhook go straight into the observations."""
        alerts = tuple(alerts)
        with self._lock(namespace, name):
            for attempt in range(attempts):
                start = time.perf_counter()
                result = "error"
                try:
                    outcome = self._reconcile(namespace, name, alerts)
                    result = outcome.result
                    if outcome.result != "conflict":
                        return outcome
                finally:
                    metrics.RECONCILES.labels("Rollout", result).inc()
                    metrics.DURATION.labels("Rollout").observe(time.perf_counter() - start)
                log.debug(f"Rollout {namespace}/{name}: status changed underneath (attempt {attempt + 1}); reading it again")
            return outcome

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((namespace, name), None)

    # ------------------------------------------------------------ one pass
    def _reconcile(self, namespace: str, name: str, alerts: tuple[Alert, ...]) -> Outcome:
        body = self.kube.get(ROLLOUT, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return Outcome("gone")
        meta = body["metadata"]
        ref = RolloutRef(name=name, namespace=namespace, uid=meta["uid"])
        old_status = dict(body.get("status") or {})
        try:
            ro = Rollout.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
            status = RolloutStatus.model_validate(old_status)
        except ValidationError as err:
            return self._blocked(body, ref, old_status, _invalid(err))
        spec = ro.spec

        # References: the FoundationModel version and adapters must exist before anything is served.
        fm = self.kube.get(FOUNDATION_MODEL, namespace, spec.model.foundationModel.name)
        adapters = {a.name: self.kube.get(TASK_ADAPTER, namespace, a.name) for a in spec.model.adapters}
        verdict = assess_rollout(body, fm, adapters)
        if "version" in verdict.extra:  # FollowLatest: serve the newest complete bundle assess_rollout resolved, as if named;
            # a served revision is pinned to what it serves (status has the spec's schema rules too)
            target = spec.model.foundationModel.model_copy(update={"version": verdict.extra["version"], "versionPolicy": "Pinned"})
            spec = spec.model_copy(update={"model": spec.model.model_copy(update={"foundationModel": target})})
        refs_ok = verdict.phase != "Failed" and all(c.status == "True" for c in verdict.conditions if c.type in ("Accepted", "ResolvedRefs"))
        if not refs_ok and status.revision == 0:
            return self._blocked(body, ref, old_status, verdict.message, verdict)
        try:
            uri = storage_uri(spec.model, spec.serving, fm)
        except StorageError as err:
            if status.revision == 0:
                return self._blocked(body, ref, old_status, str(err), verdict)
            uri = ""  # keep serving what runs; a new revision cannot start until the artifact is known

        annotations = meta.get("annotations") or {}
        traffic = self.traffic_for(spec)
        seen: ObservedTraffic | Literal["unknown"]
        try:
            seen = traffic.observe(ref, spec)
        except TrafficError as err:
            if not err.retry:
                raise
            seen = "unknown"
        isvcs = self._inference_services(ref)
        obs = Observations(
            inference_services=tuple(state for state, _ in isvcs.values()),
            alerts=alerts,
            traffic=seen,
            promote_request=annotations.get(PROMOTE_ANNOTATION),
            retry_request=annotations.get(RETRY_ANNOTATION),
            abort_request=annotations.get(ABORT_ANNOTATION),
            generation=meta.get("generation"),
            hold=None if refs_ok else verdict.message,
        )
        now = self.clock()
        first = decide(spec, status, obs, now)
        decision, notes = first, list(first.events)
        extra = self._measurements(ref, spec, first, now) if not alerts else ()
        if extra:
            obs = replace(obs, measurements=extra[0], split=extra[1])
            later = max([now, *(m.measured_at for m in extra[0])])
            decision = decide(spec, first.status, obs, later)
            notes += [e for e in decision.events]
        records = [a for a in (*first.actions, *decision.actions) if isinstance(a, RecordHistory)]

        # Conditions the engine does not own (Accepted, ResolvedRefs, Ready) come from the reference check.
        new = decision.status
        conditions = [c.model_dump(exclude_none=True) for c in new.conditions]
        ready = _ready(new)
        merged, transitions = merge(conditions, [*[c for c in verdict.conditions if c.type != "Ready"], ready], meta.get("generation"), ts(now))
        notes += _transition_events(transitions)
        new_status = {**new.model_dump(mode="json", exclude_none=True), "conditions": merged}

        # Act: traffic first when the decision takes traffic away from the canary.
        done: list[str] = []
        traffic_at: float | None = None
        ordered = sorted(decision.actions, key=lambda a: 0 if isinstance(a, SetTraffic) and new.phase in ("RolledBack", "Failed") else 1)
        for action in ordered:
            if isinstance(action, EnsureInferenceService):
                found = isvcs.get(action.revision, (None, None))[1]
                served = revision_uri(action.model, spec.model, uri, fm, found)
                wanted = render_isvc(ref, action.revision, spec.serving, served) if served else None
                if wanted is None or (found is not None and contains(found, wanted)):
                    continue  # as wanted already: no write, so KServe's webhooks are not called on every tick
                self.kube.apply(INFERENCE_SERVICE, wanted)
                done.append(f"ensure {naming.isvc_name(name, action.revision)}")
            elif isinstance(action, SetTraffic):  # always applied: an unchanged server-side apply writes nothing
                canary = isvcs.get(action.canary_revision) if action.canary_revision is not None else None
                if action.canary_revision is not None and not (action.canary_weight or action.mirror_percent) and not (canary and canary[0].ready):
                    # No share for a canary that is not Ready yet: leave its backend out of the route entirely. Gateways
                    # drop a route whose backend Service has no endpoints (Traefik answers 404 for all of it).
                    action = replace(action, canary_revision=None)
                try:
                    traffic.apply(ref, spec, action)
                except TrafficError as err:
                    raise KubeError(f"Rollout {namespace}/{name}: {err}", retry=err.retry, status=err.status) from err
                traffic_at = time.monotonic()
                if obs.traffic == "unknown" or _differs(obs.traffic, action):
                    done.append(f"traffic {100 - action.canary_weight}/{action.canary_weight} mirror {action.mirror_percent}")
            elif isinstance(action, RemoveInferenceService):
                self.kube.delete(INFERENCE_SERVICE, namespace, naming.isvc_name(name, action.revision))
                done.append(f"remove {naming.isvc_name(name, action.revision)}")

        result: Literal["changed", "unchanged", "conflict"] = "unchanged"
        if _strip_times(new_status) != _strip_times(old_status):
            if not self._write_status(body, new_status):
                return Outcome("conflict")
            result = "changed"
            for event in notes:
                self._event(body, event)
            for record in records:
                metrics.ROLLOUT_OUTCOMES.labels(record.entry.outcome).inc()
        return Outcome(result, new.phase, tuple(done), traffic_at, new.message, busy=_busy(new, spec),
                       rolled_back=result == "changed" and new.phase == "RolledBack" and status.phase != "RolledBack")

    # ------------------------------------------------------------ observations
    def _inference_services(self, ref: RolloutRef) -> dict[int, tuple[InferenceServiceState, dict[str, Any]]]:
        """The Rollout's InferenceServices by revision: their state, and the object as found."""
        out: dict[int, tuple[InferenceServiceState, dict[str, Any]]] = {}
        for item in self.kube.list(INFERENCE_SERVICE, ref.namespace, {naming.LABEL_ROLLOUT: ref.name}):
            state = observe_isvc(item)
            if state is not None:
                out[state.revision] = (state, item)
        return out

    def _measurements(self, ref: RolloutRef, spec: RolloutSpec, d: Decision, now: datetime) -> tuple[tuple[Measurement, ...], SplitSample | None] | None:
        measure = next((a for a in d.actions if isinstance(a, Measure)), None)
        s = d.status
        weight_step = (s.canary is not None and s.stable is not None and s.canaryWeight > 0 and s.currentStepIndex is not None
                       and 0 <= s.currentStepIndex < len(spec.strategy.steps) and spec.strategy.steps[s.currentStepIndex].setWeight is not None)
        if measure is None and not weight_step:
            return None
        if self.analysis is None:
            taken = tuple(Measurement(m, "Error", now, message="the operator runs without Prometheus (--prometheus-url empty)")
                          for m in (measure.metrics if measure else ()))
            return taken, None
        taken = self.analysis.measure(ref, spec, measure, now) if measure else ()
        split = None
        if weight_step and s.canary is not None and s.stable is not None and s.currentStepStartedAt:
            split = self.analysis.split(ref, spec, s.stable.revision, s.canary.revision, parse_ts(s.currentStepStartedAt), now)
        return taken, split

    # ------------------------------------------------------------ writing
    def _blocked(self, body: dict[str, Any], ref: RolloutRef, old: dict[str, Any], message: str, verdict: Any = None) -> Outcome:
        """Nothing can be served yet (bad reference, no artifact): say so in status, touch nothing else."""
        now = ts(self.clock())
        wanted = list(verdict.conditions) if verdict is not None else [Cond("Accepted", "False", "InvalidSpec", message)]
        if verdict is not None and not any(c.type == "Ready" and c.status == "False" and c.message == message for c in wanted):
            wanted = [c for c in wanted if c.type != "Ready"] + [Cond("Ready", "False", "NotServing", message)]
        conditions, transitions = merge(list(old.get("conditions") or []), wanted, body["metadata"].get("generation"), now)
        phase = verdict.phase if verdict is not None and verdict.phase == "Failed" else "Failed" if verdict is None else (old.get("phase") or "Pending")
        new = {**old, "phase": phase, "message": message[:1024], "conditions": conditions,
               "observedGeneration": body["metadata"].get("generation")}
        if _strip_times(new) != _strip_times(old):
            if not self._write_status(body, new):
                return Outcome("conflict")
            for event in _transition_events(transitions):
                self._event(body, event)
            return Outcome("blocked", new["phase"], message=message)
        return Outcome("blocked", new["phase"], message=message)

    def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Replace status with the resourceVersion read: False on a conflict (someone wrote in between)."""
        try:
            self.kube.replace_status(ROLLOUT, body, status)
            return True
        except Conflict:
            return False

    def _event(self, body: dict[str, Any], event: EmitEvent) -> None:
        """A core/v1 Event on the Rollout (posted directly: the webhook path runs outside kopf's handlers)."""
        meta = body["metadata"]
        try:
            self.kube.event(body, event.type, event.reason, event.message)
        except KubeError as err:  # an Event is worth a log line, never a failed reconcile
            log.warning(f"could not post Event {event.reason} on Rollout {meta['namespace']}/{meta['name']}: {err}")
        (log.info if event.type == "Normal" else log.warning)(f"Rollout {meta['namespace']}/{meta['name']}: {event.reason}: {event.message}")


# ---------------------------------------------------------------- small pure helpers
def _ready(s: RolloutStatus) -> Cond:
    if s.stable is not None and s.stable.promotedAt is not None:
        return Cond("Ready", "True", "Serving", f"revision {s.stable.revision} ({s.stableVersion}) serves "
                                                f"{s.stableWeight}% of traffic" + (f", canary {s.canaryVersion} {s.canaryWeight}%" if s.canary else ""))
    return Cond("Ready", "False", "NotServing", s.message or "no revision serves traffic yet")


def _transition_events(transitions: list[Transition]) -> list[EmitEvent]:
    """An Event per condition whose status changed, with the condition's reason (as for the other kinds)."""
    out = []
    for t in transitions:
        metrics.TRANSITIONS.labels("Rollout", t.cond.type, t.cond.status).inc()
        out.append(EmitEvent("Normal" if t.cond.status == "True" else "Warning", t.cond.reason, f"{t.cond.type}: {t.cond.message}"))
    return out


# Waiting on these is event-driven (an InferenceService watch event, a spec edit), not time-driven.
_IDLE_REASONS = ("StableNotReady", "CanaryNotReady", "PausedBySpec")


def _busy(s: RolloutStatus, spec: RolloutSpec) -> bool:
    if s.phase not in ("Pending", "Shadowing", "Progressing", "Paused") or spec.paused:
        return False
    progressing = next((c for c in s.conditions if c.type == "Progressing"), None)
    return progressing is None or progressing.reason not in _IDLE_REASONS


def contains(found: Any, wanted: Any) -> bool:
    """Does the object as found carry everything we would write (defaults added by others are fine)?"""
    if isinstance(wanted, dict):
        return isinstance(found, dict) and all(k in found and contains(found[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(found, list) and len(found) == len(wanted) and all(contains(f, w) for f, w in zip(found, wanted))
    return bool(found == wanted)


def _differs(seen: ObservedTraffic, action: SetTraffic) -> bool:
    return (seen.canary_weight, seen.mirror_percent) != (action.canary_weight, action.mirror_percent) or (
        action.canary_revision is not None and seen.canary_revision not in (None, action.canary_revision))


def _strip_times(status: dict[str, Any]) -> dict[str, Any]:
    """Status without the condition timestamps: what decides whether a write is needed."""
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []]
    return out


def _invalid(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    return f"{path}: {first['msg']}; fix the field, or upgrade the CRDs to match this operator"

