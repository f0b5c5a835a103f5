"""The I/O around the rollout engine: read what decide() needs, call it, carry out what it says.

One reconcile of one Rollout, the same whoever asks (the kopf daemon's tick, a watch event on one
of its InferenceServices, a spec edit, or the Alertmanager webhook with alerts in hand):

1. read the Rollout, the objects it references, its InferenceServices and its traffic object;
2. `decide(spec, status, observations, now)`; if it asks for measurements (Measure, SampleSplit),
   take them and decide again with the results, so a measurement is counted in the reconcile that took it;
3. write status first, with the resourceVersion read: it is the intent. A concurrent writer makes this
   a conflict and the reconcile is tried again on fresh data; a conflict that persists is an error
   (the webhook answers 500, so Alertmanager resends), never a result;
4. carry out the actions in the order decide gave (traffic first on a rollback). Every action is
   level-triggered from status, so an operator killed anywhere after step 3 finishes the job on its
   next reconcile, and one killed before it left the old state whole: a recorded rollback is never undone;
5. post the Events and count the metrics of the transitions just written (at most once: an Event lost
   to a crash is not posted twice).

A rollback whose status cannot be written at all (the API server refuses status writes: an admission
outage) still takes traffic off the canary at once, and this process keeps it off (the rollback is
fed back into every decision) until status records it; the reconcile fails, so an alert is resent.

Reconciles of the same Rollout never overlap in this process (a lock per Rollout), so a webhook
rollback and a timer tick cannot decide from the same stale status.

Tests can make the operator exit hard at a named point between two writes (`FMOP_TEST_CRASH_AT`,
see `crash_from_env`); the chart never sets it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from kubernetes import client
from pydantic import ValidationError

from fmop import metrics
from fmop.api.rollout import Rollout, RolloutSpec, RolloutStatus, TrafficRouting
from fmop.assess import assess_rollout
from fmop.cache import Unsynced, WatchCache
from fmop.conditions import Cond, merge
from fmop.kinds import FOUNDATION_MODEL, INFERENCE_SERVICE, ROLLOUT, TASK_ADAPTER, Kind
from fmop.kube import Conflict, KubeError
from fmop.rollout import analysis, naming
from fmop.rollout.clock import ts
from fmop.rollout.engine import ACTIVE, decide, decide_invalid, effective_spec
from fmop.rollout.providers import kube as provider_io
from fmop.rollout.providers import provider_for
from fmop.rollout.providers.base import RolloutRef, TrafficProvider
from fmop.rollout.providers.kube import ForeignObject, TrafficError
from fmop.rollout.serving import StorageError, observe_isvc, render_isvc, revision_uri, storage_uri
from fmop.rollout.types import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    Alert,
    Decision,
    EmitEvent,
    EnsureInferenceService,
    ExperimentCounts,
    ExperimentUnknown,
    InferenceServiceState,
    Measure,
    Measurement,
    Observations,
    ObservedTraffic,
    RecordHistory,
    RemoveInferenceService,
    SampleExperiment,
    SampleSplit,
    SetTraffic,
    SplitSample,
    SplitUnknown,
    UnrecordedRollback,
)

log = logging.getLogger("fmop.rollout")

CRASH_ENV = "FMOP_TEST_CRASH_AT"
CRASH_POINTS = ("status-written", "inferenceservice-applied", "traffic-applied", "inferenceservice-deleted", "event-posted")
CRASH_EXIT_CODE = 86


# ---------------------------------------------------------------- what the controller needs from the outside
class Cluster(Protocol):
    """The calls the controller makes to the API server: fmop.kube.Kube's, with its errors (KubeError, Conflict)."""

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]: ...

    def apply(self, kind: Kind, obj: dict[str, Any], field_manager: str | None = None) -> dict[str, Any]: ...

    def delete(self, kind: Kind, namespace: str, name: str) -> bool: ...

    def replace_status(self, kind: Kind, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]: ...

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str, component: str = "fm-operator") -> None: ...


class Traffic(Protocol):
    """The traffic provider of a Rollout: route as asked, and tell what the traffic object says now."""

    def apply(self, ref: RolloutRef, routing: TrafficRouting, action: SetTraffic) -> bool:
        """Route as asked; True when something was written (False: it was so already)."""
        ...

    def observe(self, ref: RolloutRef, routing: TrafficRouting) -> ObservedTraffic | Literal["unknown"]: ...


class Analysis(Protocol):
    """Prometheus: measurements of analysis metrics, and the split observed at the backends."""

    def measure(self, ref: RolloutRef, spec: RolloutSpec, action: Measure, now: datetime) -> tuple[Measurement, ...]: ...

    def split(self, ref: RolloutRef, spec: RolloutSpec, action: SampleSplit, now: datetime) -> SplitSample | SplitUnknown: ...

    def experiment(self, ref: RolloutRef, spec: RolloutSpec, action: SampleExperiment, now: datetime) -> ExperimentCounts | ExperimentUnknown: ...


class ProviderTraffic:
    """`Traffic` on a traffic provider: reads its objects once per reconcile, writes only what differs."""

    def __init__(self, api: client.ApiClient, provider: TrafficProvider) -> None:
        self.api, self.provider = api, provider
        self._found: list[dict[str, Any] | None] | None = None

    def observe(self, ref: RolloutRef, routing: TrafficRouting) -> ObservedTraffic | Literal["unknown"]:
        self._found = provider_io.read(self.api, self.provider, ref.namespace, self.provider.objects(ref, routing))
        return self.provider.observe(self._found)

    def apply(self, ref: RolloutRef, routing: TrafficRouting, action: SetTraffic) -> bool:
        objects = self.provider.render(ref, routing, action)
        found = self._found
        if found is not None and len(found) == len(objects) and all(f is not None and contains(f, o) for f, o in zip(found, objects)):
            return False  # as wanted already: an apply would write nothing
        provider_io.apply(self.api, self.provider, self.provider.objects(ref, routing), objects)
        self._found = None
        return True


class PrometheusAnalysis:
    """`Analysis` on Prometheus' HTTP API (fmop.rollout.analysis); spec.analysis.prometheusAddress wins over the default,
    when it is the default or on `allow` (--prometheus-allow); any other address gets no query, and an Error naming it."""

    def __init__(self, default_url: str, allow: Iterable[str] = ()) -> None:
        self.default_url = default_url
        self.allow = analysis.AllowList(default_url, tuple(allow))

    def measure(self, ref: RolloutRef, spec: RolloutSpec, action: Measure, now: datetime) -> tuple[Measurement, ...]:
        return analysis.measure(action, spec, ref.namespace, ref.name, self.default_url, now, allow=self.allow)

    def split(self, ref: RolloutRef, spec: RolloutSpec, action: SampleSplit, now: datetime) -> SplitSample | SplitUnknown:
        return analysis.observed_split(spec.analysis.prometheusAddress or self.default_url, ref.namespace, ref.name,
                                       action.stable_revision, action.canary_revision, action.since, now, allow=self.allow)

    def experiment(self, ref: RolloutRef, spec: RolloutSpec, action: SampleExperiment, now: datetime) -> ExperimentCounts | ExperimentUnknown:
        return analysis.experiment_counts(spec.analysis.prometheusAddress or self.default_url, ref.namespace, ref.name,
                                          action.stable_revision, action.canary_revision, action.success, action.since, now,
                                          allow=self.allow)


def traffic_for(api: client.ApiClient) -> Callable[[TrafficRouting], Traffic]:
    """The Traffic of a Rollout's spec.trafficRouting.provider, fresh per reconcile."""
    return lambda routing: ProviderTraffic(api, provider_for(routing))


def crash_from_env(environ: dict[str, str] | None = None) -> Callable[[str, str], None]:
    """Test only: FMOP_TEST_CRASH_AT=point[@Phase] makes the process exit hard (os._exit, no clean-up, like
    SIGKILL) the first time it passes `point` while carrying out a decision whose phase is Phase (any phase
    when none is given). Points: CRASH_POINTS, each right after a write. Unset: does nothing (the chart never sets it)."""
    wanted = (environ if environ is not None else os.environ).get(CRASH_ENV, "").strip()
    if not wanted:
        return lambda point, phase: None
    point_wanted, _, phase_wanted = wanted.partition("@")
    if point_wanted not in CRASH_POINTS:
        raise ValueError(f"{CRASH_ENV}={wanted}: unknown crash point {point_wanted!r}; one of {', '.join(CRASH_POINTS)} (optionally @Phase)")
    log.warning(f"{CRASH_ENV}={wanted}: this operator exits hard at that point (a test switch; never set it in production)")

    def crash(point: str, phase: str) -> None:
        if point == point_wanted and phase_wanted in ("", phase):
            log.warning(f"{CRASH_ENV}: exiting hard at {point} ({phase})")
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)

    return crash


class StatusConflict(Conflict):
    """The Rollout's status changed underneath every attempt: nothing was acted on; the caller must try again."""


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
    next_look: datetime | None = None  # reconcile again by then at the latest; None: only an event (or the idle resync) needs to


@dataclass
class Controller:
    kube: Cluster  # fmop.kube.Kube in the operator
    traffic_for: Callable[[TrafficRouting], Traffic]
    analysis: Analysis | None = None  # None: measurements come back as Error naming the missing Prometheus
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    crash: Callable[[str, str], None] = field(default_factory=crash_from_env)
    cache: WatchCache | None = None  # what kopf's watches saw (fmop.cache); None: every read goes to the API server
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict, init=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, init=False)
    _unrecorded: dict[tuple[str, str], UnrecordedRollback] = field(default_factory=dict, init=False)

    # ------------------------------------------------------------ entry point
    def reconcile(self, namespace: str, name: str, alerts: Iterable[Alert] = (), attempts: int = 3, fresh: bool = False) -> Outcome:
        """Reconcile one Rollout now; alerts from the webhook go straight into the observations.

        Reads come from the watch cache when there is one, except with `fresh` (the Rollout and its InferenceServices
        from the API server: the daemon asks for it at each idle wake, which heals a deletion the watch missed) and
        after a conflict (the cache was behind what the API server holds).

        Raises KubeError when the API server fails, and StatusConflict when status changed underneath every
        attempt: either way nothing was recorded, and an alert must be resent (the webhook answers 500)."""
        alerts = tuple(alerts)
        with self._lock(namespace, name):
            for attempt in range(attempts):
                start = time.perf_counter()
                result = "error"
                try:
                    outcome = self._reconcile(namespace, name, alerts, fresh or attempt > 0)
                    result = outcome.result
                    if outcome.result != "conflict":
                        return outcome
                finally:
                    metrics.RECONCILES.labels("Rollout", result).inc()
                    metrics.DURATION.labels("Rollout").observe(time.perf_counter() - start)
                log.debug(f"Rollout {namespace}/{name}: status changed underneath (attempt {attempt + 1}); reading it again")
            raise StatusConflict(f"update status of Rollout {namespace}/{name}: it changed underneath {attempts} times in a row (another "
                                 "writer: a second operator without leader election?); nothing was acted on, trying again", retry=True, status=409)

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((namespace, name), None)

    # ------------------------------------------------------------ one pass
    def _reconcile(self, namespace: str, name: str, alerts: tuple[Alert, ...], fresh: bool = False) -> Outcome:
        body = self._get(ROLLOUT, namespace, name, fresh)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self._unrecorded.pop((namespace, name), None)
            return Outcome("gone")
        meta = body["metadata"]
        ref = RolloutRef(name=name, namespace=namespace, uid=meta["uid"])
        old_status = dict(body.get("status") or {})
        try:
            ro = Rollout.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
            status = RolloutStatus.model_validate(old_status)
        except ValidationError as err:
            return self._invalid(body, ref, old_status, _invalid(err), alerts)
        spec = ro.spec

        # References: the FoundationModel version and adapters must exist before anything is served.
        fm = self._get(FOUNDATION_MODEL, namespace, spec.model.foundationModel.name)
        adapters = {a.name: self._get(TASK_ADAPTER, namespace, a.name) for a in spec.model.adapters}
        verdict = assess_rollout(body, fm, adapters)
        latest = verdict.extra.get("version")
        refs_ok = verdict.phase != "Failed" and all(c.status == "True" for c in verdict.conditions if c.type in ("Accepted", "ResolvedRefs"))
        hold = None if refs_ok else verdict.message
        served = effective_spec(spec, Observations(latest_version=latest))
        uri = ""  # unknown: keep serving what runs; a new revision cannot start until the artifact is known
        try:
            uri = storage_uri(served.model, served.serving, fm)
        except StorageError as err:
            if hold is None and status.revision == 0:
                hold = str(err)

        annotations = meta.get("annotations") or {}
        provider_traffic = self.traffic_for(spec.trafficRouting)
        traffic: Traffic | None = provider_traffic
        references = tuple(verdict.conditions)
        try:
            seen = _observe(provider_traffic, ref, spec.trafficRouting)
        except ForeignObject as err:  # not the Rollout's: nothing is read from it or written to it (providers.kube)
            traffic, seen = None, ObservedTraffic(canary_weight=0, mirror_percent=0)  # it routes nothing of the Rollout's
            references = (*(c for c in references if c.type != "ResolvedRefs"), Cond("ResolvedRefs", "False", "RefNotPermitted", str(err)))
            hold = hold or str(err)
        isvcs = self._inference_services(ref, fresh)
        obs = Observations(
            inference_services=tuple(state for state, _ in isvcs.values()),
            alerts=alerts,
            traffic=seen,
            promote_request=annotations.get(PROMOTE_ANNOTATION),
            retry_request=annotations.get(RETRY_ANNOTATION),
            abort_request=annotations.get(ABORT_ANNOTATION),
            generation=meta.get("generation"),
            hold=hold,
            hold_failed=verdict.phase == "Failed",
            references=references,
            latest_version=latest,
            unrecorded=self._unrecorded.get((namespace, name)),
        )
        now = self.clock()
        first = decide(spec, status, obs, now)
        decision, notes = first, list(first.events)
        taken = self._measurements(ref, served, first, now) if not alerts else None
        if taken is not None:
            measured, split, counts = taken
            later = max([now, *(m.measured_at for m in measured), *([counts.at] if counts is not None else [])])
            decision = decide(spec, first.status, replace(obs, measurements=measured, split=split, experiment=counts), later)
            notes += list(decision.events)
        records = [a for a in (*first.actions, *decision.actions) if isinstance(a, RecordHistory)]
        return self._write_and_act(body, ref, old_status, status, decision, notes, records, served, spec.trafficRouting, traffic, isvcs,
                                   fm, uri)

    def _write_and_act(self, body: dict[str, Any], ref: RolloutRef, old_status: dict[str, Any], status: RolloutStatus, decision: Decision,
                       notes: list[EmitEvent], records: list[RecordHistory], spec: RolloutSpec | None,
                       routing: TrafficRouting | None, traffic: Traffic | None,
                       isvcs: dict[int, tuple[InferenceServiceState, dict[str, Any]]], fm: dict[str, Any] | None, uri: str) -> Outcome:
        """Write the decided status first (the intent), then carry out the actions in order, then post the Events."""
        namespace, name = ref.namespace, ref.name
        key = (namespace, name)
        new = decision.status
        new_status = new.model_dump(mode="json", exclude_none=True)
        phase = new.phase
        takes_off = phase in ("RolledBack", "Failed") and status.phase in ACTIVE and status.canary is not None
        changed = _strip_times(new_status) != _strip_times(old_status)
        if changed:
            try:
                self._seen(ROLLOUT, self.kube.replace_status(ROLLOUT, body, new_status))
            except Conflict:
                return Outcome("conflict")
            except KubeError as err:
                if not takes_off or traffic is None or routing is None:
                    raise
                self._take_off_unrecorded(ref, routing, traffic, status, decision)
                raise KubeError(f"{err}; the {phase} of revision {status.canary.revision if status.canary else '?'} could not be recorded "
                                "in status: all traffic is on the stable now and this operator keeps it there until status records it; "
                                "trying again", retry=True, status=err.status) from err
            self._unrecorded.pop(key, None)
            self.crash("status-written", phase)

        done: list[str] = []
        traffic_at: float | None = None
        for action in decision.actions:
            if isinstance(action, EnsureInferenceService) and spec is not None:
                found = isvcs.get(action.revision, (None, None))[1]
                served = revision_uri(action.model, spec.model, uri, fm, found)
                wanted = render_isvc(ref, action.revision, spec.serving, served) if served else None
                if wanted is None or (found is not None and contains(found, wanted)):
                    continue  # as wanted already: no write, so KServe's webhooks are not called on every tick
                self._seen(INFERENCE_SERVICE, self.kube.apply(INFERENCE_SERVICE, wanted))
                done.append(f"ensure {naming.isvc_name(name, action.revision)}")
                self.crash("inferenceservice-applied", phase)
            elif isinstance(action, SetTraffic) and traffic is not None and routing is not None:
                try:
                    wrote = traffic.apply(ref, routing, action)
                except TrafficError as err:
                    raise KubeError(f"Rollout {namespace}/{name}: {err}", retry=err.retry, status=err.status) from err
                if wrote:
                    traffic_at = time.monotonic()
                    done.append(f"traffic {100 - action.canary_weight}/{action.canary_weight} mirror {action.mirror_percent}"
                                + (f" buckets {action.buckets[0]}..{action.buckets[1]}" if action.buckets else ""))
                    self.crash("traffic-applied", phase)
            elif isinstance(action, RemoveInferenceService):
                self.kube.delete(INFERENCE_SERVICE, namespace, naming.isvc_name(name, action.revision))
                if self.cache is not None:
                    self.cache.gone(INFERENCE_SERVICE, namespace, naming.isvc_name(name, action.revision))
                done.append(f"remove {naming.isvc_name(name, action.revision)}")
                self.crash("inferenceservice-deleted", phase)

        if changed:
            _count_transitions(old_status.get("conditions") or [], new_status.get("conditions") or [])
            for event in notes:
                self._event(body, event)
                self.crash("event-posted", phase)
            for record in records:
                metrics.ROLLOUT_OUTCOMES.labels(record.entry.outcome).inc()
        if decision.blocked:
            return Outcome("blocked", phase, message=new.message)
        return Outcome("changed" if changed else "unchanged", phase, tuple(done), traffic_at, new.message, busy=decision.busy,
                       rolled_back=changed and phase == "RolledBack" and status.phase != "RolledBack", next_look=decision.next_look)

    def _take_off_unrecorded(self, ref: RolloutRef, routing: TrafficRouting, traffic: Traffic, status: RolloutStatus, decision: Decision) -> None:
        """Status cannot be written, but the canary must not keep serving: route to the stable now, and remember the
        rollback so that every later decision of this process makes it again until status records it."""
        new = decision.status
        assert status.canary is not None
        for action in decision.actions:
            if isinstance(action, SetTraffic):
                traffic.apply(ref, routing, action)
        self._unrecorded[(ref.namespace, ref.name)] = UnrecordedRollback(
            status.canary.revision, "RolledBack" if new.phase == "RolledBack" else "Failed", new.rollbackReason or new.message)
        log.error(f"Rollout {ref.namespace}/{ref.name}: {new.phase} of revision {status.canary.revision} carried out (all traffic on the "
                  "stable) but its status write failed; holding it until status records it")

    # ------------------------------------------------------------ a spec that no longer validates
    def _invalid(self, body: dict[str, Any], ref: RolloutRef, old_status: dict[str, Any], problem: str, alerts: tuple[Alert, ...]) -> Outcome:
        """Nothing new can start; the revision in flight fails (or rolls back on a new matching alert), and its traffic
        goes to the stable if spec.trafficRouting can still be read. Status that does not validate is only annotated."""
        meta = body["metadata"]
        try:
            status = RolloutStatus.model_validate(old_status)
        except ValidationError:
            now = ts(self.clock())
            conditions, _ = merge(list(old_status.get("conditions") or []), [Cond("Accepted", "False", "InvalidSpec", problem)],
                                  meta.get("generation"), now)
            new = {**old_status, "phase": "Failed", "message": problem[:1024], "conditions": conditions, "observedGeneration": meta.get("generation")}
            if _strip_times(new) != _strip_times(old_status):
                self._seen(ROLLOUT, self.kube.replace_status(ROLLOUT, body, new))
            return Outcome("blocked", "Failed", message=problem)
        try:
            routing: TrafficRouting | None = TrafficRouting.model_validate((body.get("spec") or {}).get("trafficRouting"))
        except ValidationError as err:
            routing = None
            if alerts and status.phase in ACTIVE and status.canary is not None:
                raise KubeError(f"Rollout {ref.namespace}/{ref.name}: a matching alert cannot take traffic off canary revision "
                                f"{status.canary.revision}: spec.trafficRouting does not validate ({_invalid(err)})", retry=False) from err
        obs = Observations(alerts=alerts, generation=meta.get("generation"))
        decision = decide_invalid(status, obs, self.clock(), problem)
        traffic = self.traffic_for(routing) if routing is not None else None  # without it, SetTraffic is left undone
        if traffic is not None and routing is not None:
            try:
                _observe(traffic, ref, routing)  # what is routed now, so an unchanged route is not written again
            except ForeignObject:
                traffic = None  # not the Rollout's: SetTraffic is left undone
        records = [a for a in decision.actions if isinstance(a, RecordHistory)]
        out = self._write_and_act(body, ref, old_status, status, decision, list(decision.events), records,
                                  None, routing, traffic, {}, None, "")
        return replace(out, rolled_back=decision.status.phase == "RolledBack" and status.phase != "RolledBack")

    # ------------------------------------------------------------ observations
    def _get(self, kind: Kind, namespace: str, name: str, fresh: bool = False) -> dict[str, Any] | None:
        """One object, from the watch cache unless `fresh` or the kind is not served there; a fresh read updates the cache."""
        if self.cache is not None and not fresh:
            try:
                return self.cache.get(kind, namespace, name)
            except Unsynced:
                pass
        found = self.kube.get(kind, namespace, name)
        if self.cache is not None:
            if found is None:
                self.cache.gone(kind, namespace, name)
            else:
                self.cache.seen(kind, found)
        return found

    def _list(self, kind: Kind, namespace: str, labels: Mapping[str, str], fresh: bool = False) -> list[dict[str, Any]]:
        if self.cache is not None and not fresh:
            try:
                return self.cache.list(kind, namespace, labels)
            except Unsynced:
                pass
        found = self.kube.list(kind, namespace, labels)
        if self.cache is not None and self.cache.serves(kind):
            names = {(o.get("metadata") or {}).get("name") for o in found}
            for held in self.cache.list(kind, namespace, labels):  # a deletion the watch missed (kopf relists without telling)
                if (held.get("metadata") or {}).get("name") not in names:
                    self.cache.gone(kind, namespace, str(held["metadata"]["name"]))
            for obj in found:
                self.cache.seen(kind, obj)
        return found

    def _seen(self, kind: Kind, written: dict[str, Any] | None) -> None:
        """What a write returned, into the cache: the next read (from the cache) is never behind our own write."""
        if self.cache is not None and written:
            self.cache.seen(kind, written)

    def _inference_services(self, ref: RolloutRef, fresh: bool = False) -> dict[int, tuple[InferenceServiceState, dict[str, Any]]]:
        """The Rollout's InferenceServices by revision: their state, and the object as found."""
        out: dict[int, tuple[InferenceServiceState, dict[str, Any]]] = {}
        for item in self._list(INFERENCE_SERVICE, ref.namespace, {naming.LABEL_ROLLOUT: ref.name}, fresh):
            state = observe_isvc(item)
            if state is not None:
                out[state.revision] = (state, item)
        return out

    def _measurements(self, ref: RolloutRef, spec: RolloutSpec, d: Decision, now: datetime) -> tuple[
            tuple[Measurement, ...], SplitSample | SplitUnknown | None, ExperimentCounts | ExperimentUnknown | None] | None:
        """Take what the decision asks to measure (Measure, SampleSplit, SampleExperiment); None when it asks for nothing."""
        measure = next((a for a in d.actions if isinstance(a, Measure)), None)
        sample = next((a for a in d.actions if isinstance(a, SampleSplit)), None)
        count = next((a for a in d.actions if isinstance(a, SampleExperiment)), None)
        if measure is None and sample is None and count is None:
            return None
        if self.analysis is None:
            why = "the operator runs without Prometheus (--prometheus-url empty)"
            taken = tuple(Measurement(m, "Error", now, message=why) for m in (measure.metrics if measure else ()))
            return (taken, (SplitUnknown(why, checkable=False) if sample else None),
                    (ExperimentUnknown(why, now, count.since, checkable=False) if count else None))
        taken = self.analysis.measure(ref, spec, measure, now) if measure else ()
        split = self.analysis.split(ref, spec, sample, now) if sample else None
        if isinstance(split, SplitUnknown):
            log.debug(f"Rollout {ref.namespace}/{ref.name}: {split.message}")
        counts = self.analysis.experiment(ref, spec, count, now) if count else None
        if isinstance(counts, ExperimentUnknown):
            log.debug(f"Rollout {ref.namespace}/{ref.name}: {counts.message}")
        return taken, split, counts

    # ------------------------------------------------------------ writing
    def _event(self, body: dict[str, Any], event: EmitEvent) -> None:
        """A core/v1 Event on the Rollout (posted directly: the webhook path runs outside kopf's handlers)."""
        meta = body["metadata"]
        try:
            self.kube.event(body, event.type, event.reason, event.message)
        except KubeError as err:  # an Event is worth a log line, never a failed reconcile
            log.warning(f"could not post Event {event.reason} on Rollout {meta['namespace']}/{meta['name']}: {err}")
        (log.info if event.type == "Normal" else log.warning)(f"Rollout {meta['namespace']}/{meta['name']}: {event.reason}: {event.message}")


# ---------------------------------------------------------------- small pure helpers
def contains(found: Any, wanted: Any) -> bool:
    """Does the object as found carry everything we would write (defaults added by others are fine)?"""
    if isinstance(wanted, dict):
        return isinstance(found, dict) and all(k in found and contains(found[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(found, list) and len(found) == len(wanted) and all(contains(f, w) for f, w in zip(found, wanted))
    return bool(found == wanted)


def _strip_times(status: dict[str, Any]) -> dict[str, Any]:
    """Status without the condition timestamps: what decides whether a write is needed."""
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []]
    return out


def _invalid(err: ValidationError) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    return f"{path}: {first['msg']}; fix the field, or upgrade the CRDs to match this operator"



def _observe(traffic: Traffic, ref: RolloutRef, routing: TrafficRouting) -> ObservedTraffic | Literal["unknown"]:
    """What the traffic object routes now; "unknown" while it cannot be read for a reason worth retrying."""
    try:
        return traffic.observe(ref, routing)
    except TrafficError as err:
        if not err.retry:
            raise
        return "unknown"


def _count_transitions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """Count condition transitions (status changed or appeared) in fmop_condition_transitions_total."""
    before = {c.get("type"): c.get("status") for c in old}
    for c in new:
        if before.get(c.get("type")) != c.get("status"):
            metrics.TRANSITIONS.labels("Rollout", str(c.get("type")), str(c.get("status"))).inc()
