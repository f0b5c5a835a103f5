"""Leader election on a coordination.k8s.io/v1 Lease, the Kubernetes convention (client-go's
tools/leaderelection, which controller-runtime uses), so that of two replicas exactly one acts.

    lock = LeaseLock(api_client(), "fm-operator", "fm-operator", timeout=TIMINGS.request_timeout)
    elector = Elector(lock, identity("fm-operator-7d9c-x2x4q"))
    if await elector.acquire(stop):           # a standby until the Lease is ours (False: stop was set)
        elector.start_renewing()              # threads; no renewal for the renew deadline: the process exits
        ...                                   # act (kopf)
        elector.stop_renewing(); elector.release()   # graceful: the standby takes over at its next try

The rules (`decide`, pure, tested case by case):
- no Lease: create it, holding it; a Lease held by us: renew (renewTime now);
- a released Lease (empty holderIdentity): take it at once;
- a Lease held by another: wait until it has not changed for its leaseDurationSeconds *as measured on
  our own clock* from when we saw it change (client-go's observedTime), so clock skew between nodes
  cannot shorten anyone's lease; then take it over (leaseTransitions + 1).
Every write carries the resourceVersion read (optimistic concurrency): of two standbys that try at once,
the API server lets one win and answers the other 409.

Timings (TIMINGS): lease 10 s, renew deadline 7 s, retry 1 s. The leader renews every second; when it
has not renewed for 7 s (API server unreachable, partition, a stuck process) it exits hard (os._exit,
as controller-runtime does), 3 s before any standby may take over, and Kubernetes restarts it as a
standby. A SIGKILLed leader is replaced 9-12 s later (10.2 s measured): its last renewal was at most 1 s
before the kill, the standby saw it at most 1 s after, waits 10 s from then, and tries every second. A
graceful stop releases the Lease (empty holder, leaseDurationSeconds 1), and the standby takes over at
its next try (0.8 s measured).

Which replica gets the alerts: the leader whose webhook can judge puts the label `fmops.dev/leader=true`
(and a pod-deletion cost, so a rolling update replaces the standby first) on its own Pod, and the chart's
Service selects on that label (`PodLabel`). Pod readiness stays "this replica does its part" (`readiness`):
a readiness that only the leader passes would deadlock every rolling update (the new pod can never be
Ready while the old leader holds the Lease, and the old one is not removed until the new one is Ready) and
leave a PodDisruptionBudget with no disruption ever allowed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import urllib3.exceptions
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from fmop.kinds import LEASE, POD
from fmop.kube import Call, Conflict, KubeError, NotFound, error_for

_UNREACHABLE = (OSError, urllib3.exceptions.HTTPError)  # refused, reset, timed out (as fmop.kube maps them)

log = logging.getLogger("fmop.leader")

LEADER_LABEL = "fmops.dev/leader"  # on the leader's own Pod; the chart's Service selects on it
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"  # a rolling update removes the standby first
LEADER_DELETION_COST = "1000"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Timings:
    """client-go's three durations. Safe when renew_deadline < lease_duration: a leader that could not
    renew stops acting before anyone may take over."""

    lease_duration: float = 10.0  # how long a standby waits after the Lease last changed before taking it over
    renew_deadline: float = 7.0  # a leader that has not renewed for this long exits
    retry_period: float = 1.0  # how often the leader renews and a standby tries

    def __post_init__(self) -> None:
        assert 0 < self.retry_period < self.renew_deadline < self.lease_duration, \
            f"need 0 < retry_period < renew_deadline < lease_duration, got {self}"

    @property
    def request_timeout(self) -> float:
        """One Lease call may not take longer than half the renew deadline (a watchdog, not this, enforces the deadline)."""
        return self.renew_deadline / 2


WATCHDOG_INTERVAL = 0.1  # how often the watchdog compares the last renewal with the deadline


TIMINGS = Timings()


# ---------------------------------------------------------------- the record and the rules (pure)
@dataclass(frozen=True)
class Record:
    """A Lease's spec, as leader election reads and writes it."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Decision:
    """What to do with the Lease now: create or update it to `record`, or wait."""

    action: Literal["create", "renew", "acquire", "take-over", "wait"]
    record: Record | None  # what to write; None for "wait"
    why: str


def decide(found: Record | None, me: str, *, now: datetime, observed_at: float, clock: float, timings: Timings = TIMINGS) -> Decision:
    """May `me` take or renew the Lease, given the record `found` (None: no Lease yet), first seen
    unchanged at `observed_at` on our monotonic clock, which now reads `clock`; `now` is the wall time
    written into the Lease."""
    duration = round(timings.lease_duration)
    mine = Record(me, duration, now, now, 0)
    if found is None:
        return Decision("create", mine, "there is no Lease yet")
    if found.holder == me:
        return Decision("renew", replace(found, lease_duration_seconds=duration, renew_time=now), "we hold it")
    if not found.holder:
        return Decision("acquire", replace(mine, transitions=found.transitions + 1), "it was released")
    held_for = found.lease_duration_seconds if found.lease_duration_seconds > 0 else duration
    left = observed_at + held_for - clock
    if left > 0:
        return Decision("wait", None, f"held by {found.holder}; it may be taken over if not renewed within {left:.1f}s")
    return Decision("take-over", replace(mine, transitions=found.transitions + 1),
                    f"{found.holder} has not renewed it for {held_for}s")


def released(found: Record, now: datetime) -> Record:
    """The record a leader writes on a graceful stop: no holder, so a standby takes it at its next try
    (leaseDurationSeconds 1, as client-go's ReleaseOnCancel writes it)."""
    return Record("", 1, now, now, found.transitions)


def must_stop(renewed_at: float, clock: float, timings: Timings = TIMINGS) -> bool:
    """A leader whose last successful renewal started at `renewed_at` must stop acting once the renew deadline passed."""
    return clock - renewed_at >= timings.renew_deadline


def micro_time(t: datetime) -> str:
    """A MicroTime as the API server parses it: RFC 3339 with exactly six fractional digits, in UTC."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(r: Record) -> dict[str, Any]:
    spec: dict[str, Any] = {"holderIdentity": r.holder, "leaseDurationSeconds": r.lease_duration_seconds,
                            "leaseTransitions": r.transitions}
    if r.acquire_time is not None:
        spec["acquireTime"] = micro_time(r.acquire_time)
    if r.renew_time is not None:
        spec["renewTime"] = micro_time(r.renew_time)
    return spec


def record_of(spec: Any) -> Record:
    """The record of a V1LeaseSpec (the client's object; None fields read as empty)."""
    if spec is None:
        return Record()
    return Record(spec.holder_identity or "", int(spec.lease_duration_seconds or 0), spec.acquire_time, spec.renew_time,
                  int(spec.lease_transitions or 0))


# ---------------------------------------------------------------- what the probes answer (pure)
@dataclass(frozen=True)
class Snapshot:
    """One replica's state, as the health endpoints judge it."""

    electing: bool  # leader election is on (off: this replica acts alone, and leads at once)
    leading: bool  # it holds the Lease (or acts alone)
    judging: bool  # the operator has started and the webhook (if served) has listed the Rollouts
    lease_age: float | None  # seconds since the last Lease call that worked; None: none has yet
    lease_error: str = ""  # why the last Lease call failed
    label_clear: bool = True  # its Pod carries no leftover leader label (True outside a Pod)


def readiness(s: Snapshot, timings: Timings = TIMINGS) -> tuple[bool, str]:
    """Pod readiness (/readyz): this replica does its part. The leader once it can judge alerts; a standby
    while it can read the Lease (so it can take over) and its Pod no longer carries the leader label."""
    if s.leading:
        return leadership(s)
    if s.lease_age is None or s.lease_age > timings.lease_duration:
        return False, f"standby that cannot read the Lease: {s.lease_error or 'no answer yet'}"
    if not s.label_clear:
        return False, f"standby whose Pod still carries {LEADER_LABEL}=true from an earlier run; removing it"
    return True, "standby, ready to take over"


def leadership(s: Snapshot) -> tuple[bool, str]:
    """/leaderz, and the Pod label the Service selects on: the leader whose webhook can judge alerts."""
    if not s.leading:
        return False, "standby: another replica holds the Lease"
    if not s.judging:
        return False, "leader, starting: the Rollouts are not listed yet"
    return True, "leader" if s.electing else "acting alone (leader election is off)"


# ---------------------------------------------------------------- identity and where the Lease lives
def identity(pod_name: str = "") -> str:
    """The holderIdentity: the Pod's name (or the host's), and a random suffix so that a restarted
    container never mistakes its predecessor's Lease for its own."""
    return f"{pod_name or socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def lease_namespace(given: str, env: Mapping[str, str] = os.environ, service_account: Path = SERVICE_ACCOUNT_NAMESPACE,
                    kubeconfig_namespace: Callable[[], str] | None = None) -> str:
    """The namespace of the Lease: --lease-namespace, else POD_NAMESPACE (the chart sets it), else the
    service account's namespace in a pod, else the kubeconfig context's namespace (kubectl's rule), else default."""
    if given:
        return given
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        in_pod = service_account.read_text().strip()
    except OSError:
        in_pod = ""
    if in_pod:
        return in_pod
    return (kubeconfig_namespace or _kubeconfig_namespace)() or "default"


def _kubeconfig_namespace() -> str:
    try:
        _, active = kube_config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except Exception:  # no kubeconfig, or one without contexts: the fallback decides
        return ""
    return str((active or {}).get("context", {}).get("namespace") or "")


# ---------------------------------------------------------------- I/O: the Lease
@dataclass(frozen=True)
class Held:
    """A Lease as read: its record, and the metadata an update must send back (resourceVersion, labels)."""

    record: Record
    meta: dict[str, Any] = field(default_factory=dict)


class Lock(Protocol):
    """Where the record lives (the Lease; a dict in the unit tests). Conflict when the resourceVersion is stale."""

    where: str

    def get(self) -> Held | None: ...
    def create(self, record: Record) -> Held: ...
    def update(self, held: Held, record: Record) -> Held: ...


class LeaseLock:
    """The Lease `namespace/name` through CoordinationV1Api; failures mapped by fmop.kube.error_for."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, timeout: float = TIMINGS.request_timeout) -> None:
        self._api = client.CoordinationV1Api(api)
        self.namespace, self.name, self.timeout = namespace, name, timeout
        self.where = f"{namespace}/{name}"

    def _call(self, what: str, verb: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout)
        except (ApiException, *_UNREACHABLE) as err:
            raise error_for(Call(f"{what} Lease {self.where}", LEASE, verb, self.name), err) from err

    def _held(self, lease: Any) -> Held:
        meta = lease.metadata
        return Held(record_of(lease.spec), {"name": self.name, "namespace": self.namespace, "resourceVersion": meta.resource_version,
                                            "labels": meta.labels or {}, "annotations": meta.annotations or {}})

    def _body(self, meta: dict[str, Any], record: Record) -> dict[str, Any]:
        return {"apiVersion": LEASE.api_version, "kind": LEASE.kind, "metadata": meta, "spec": lease_spec(record)}

    def get(self) -> Held | None:
        try:
            return self._held(self._call("get", "get", self._api.read_namespaced_lease, self.name, self.namespace))
        except NotFound:
            return None

    def create(self, record: Record) -> Held:
        body = self._body({"name": self.name, "namespace": self.namespace, "labels": {"app.kubernetes.io/managed-by": "fm-operator"}},
                          record)
        try:
            return self._held(self._call("create", "create", self._api.create_namespaced_lease, self.namespace, body))
        except NotFound as err:  # the namespace itself is missing (a read of a Lease in it is a plain 404)
            raise KubeError(f"{err}: create namespace {self.namespace} or point --lease-namespace at an existing one",
                            retry=True, status=404) from err

    def update(self, held: Held, record: Record) -> Held:
        return self._held(self._call("update", "update", self._api.replace_namespaced_lease, self.name, self.namespace,
                                     self._body(held.meta, record)))


def _hard_exit(why: str) -> None:
    """Stop acting at once: no cleanup handler, no last write. Kubernetes restarts the container as a standby."""
    log.critical("%s: exiting now, so that two operators never act at once", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


class Elector:
    """One replica's side of the election: `acquire` (standby), `start_renewing` (a thread), `release`."""

    def __init__(self, lock: Lock, me: str, timings: Timings = TIMINGS, *, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC), on_lost: Callable[[str], None] = _hard_exit) -> None:
        self.lock, self.me, self.timings = lock, me, timings
        self._clock, self._now, self._on_lost = clock, now, on_lost
        self._held: Held | None = None  # what we last read or wrote
        self._observed_at = 0.0  # when (our clock) the record last changed
        self._renewed_at: float | None = None  # when the last successful renewal (or the acquisition) started
        self._seen_at: float | None = None  # when the last Lease call worked
        self.last_error = ""
        self._lock = threading.Lock()  # one round at a time
        self._stopping = threading.Event()
        self._lost_once = threading.Lock()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fmop-lease")  # not the loop's default executor, which kopf's handlers fill

    @property
    def leading(self) -> bool:
        return self._renewed_at is not None

    @property
    def holder(self) -> str:
        return self._held.record.holder if self._held else ""

    def lease_age(self) -> float | None:
        return None if self._seen_at is None else self._clock() - self._seen_at

    def _observe(self, held: Held | None) -> None:
        record = held.record if held else None
        if self._held is None or record != self._held.record:
            self._observed_at = self._clock()
        self._held = held

    def try_acquire_or_renew(self) -> bool:
        """One round: read, decide, write. True when we hold the Lease afterwards."""
        with self._lock:
            started = self._clock()
            try:
                if self.leading and self._held is not None and self._held.record.holder == self.me:
                    found: Held | None = self._held  # renew on what we wrote last; a 409 means someone else wrote since
                else:
                    found = self.lock.get()
                    self._observe(found)
                d = decide(found.record if found else None, self.me, now=self._now(), observed_at=self._observed_at,
                           clock=self._clock(), timings=self.timings)
                if d.record is None:
                    self._seen_at, self.last_error = self._clock(), ""
                    return False
                wrote = self.lock.create(d.record) if found is None else self.lock.update(found, d.record)
            except Conflict as err:  # another replica wrote first: read again next round
                self._held = None
                self._seen_at, self.last_error = self._clock(), str(err)
                return False
            except KubeError as err:
                self.last_error = str(err)
                return False
            self._observe(wrote)
            self._seen_at, self.last_error = self._clock(), ""
            if not self.leading:
                log.info("leading: %s the Lease %s as %s (%s)", d.action, self.lock.where, self.me, d.why)
            self._renewed_at = started
            return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait as a standby until we hold the Lease (True), or until `stop` is set (False)."""
        loop = asyncio.get_running_loop()
        log.info("standby: waiting for the Lease %s as %s (lease %ss, renew deadline %ss, retry %ss)", self.lock.where, self.me,
                 self.timings.lease_duration, self.timings.renew_deadline, self.timings.retry_period)
        said = ""
        while not stop.is_set():
            if await loop.run_in_executor(self._pool, self.try_acquire_or_renew):
                return True
            news = self.last_error or f"held by {self.holder}"
            if news != said:  # one line per change, not one a second
                (log.warning if self.last_error else log.info)("standby: the Lease %s is %s", self.lock.where,
                                                               f"out of reach: {news}" if self.last_error else news)
                said = news
            try:
                await asyncio.wait_for(stop.wait(), self.timings.retry_period)
            except TimeoutError:
                pass
        return False

    def start_renewing(self) -> None:
        """Renew every retry period on a thread of its own (kopf's loop may be busy); exit hard when another
        replica holds the Lease, or when the renew deadline passes without a renewal: a watchdog thread
        checks that every WATCHDOG_INTERVAL, so a call that hangs cannot carry us past the deadline."""
        self._thread = threading.Thread(target=self._renew_forever, name="fmop-lease-renewer", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="fmop-lease-watchdog", daemon=True)
        self._thread.start()
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCHDOG_INTERVAL):
            renewed_at = self._renewed_at
            if renewed_at is not None and must_stop(renewed_at, self._clock(), self.timings):
                self._lost(f"could not renew the Lease {self.lock.where} for {self.timings.renew_deadline}s: "
                           f"{self.last_error or 'the call has not answered'}")
                return

    def _lost(self, why: str) -> None:
        with self._lost_once:
            if not self._stopping.is_set():
                self._stopping.set()
                self._on_lost(why)

    def renew_once(self) -> str | None:
        """One round of the renewer: None while we lead, else why we must stop acting now."""
        if self.try_acquire_or_renew():
            return None
        holder = self.holder
        if holder and holder != self.me:
            return f"the Lease {self.lock.where} is held by {holder} now"
        if self._renewed_at is None or must_stop(self._renewed_at, self._clock(), self.timings):
            return f"could not renew the Lease {self.lock.where} for {self.timings.renew_deadline}s: {self.last_error}"
        log.warning("could not renew the Lease %s (%s); trying again", self.lock.where, self.last_error)
        return None

    def _renew_forever(self) -> None:
        while not self._stopping.wait(self.timings.retry_period):
            why = self.renew_once()
            if why is not None:
                self._lost(why)
                return

    def stop_renewing(self) -> None:
        self._stopping.set()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(timeout=self.timings.request_timeout + self.timings.retry_period)

    def release(self) -> bool:
        """Give the Lease up (after acting stopped), so a standby takes over at its next try. False when it was not ours."""
        with self._lock:
            if not self.leading:
                return False
            self._renewed_at = None
            try:
                found = self.lock.get()
                if found is None or found.record.holder != self.me:
                    return False
                self.lock.update(found, released(found.record, self._now()))
            except KubeError as err:
                log.warning("could not release the Lease %s (%s): a standby takes over once it expires, in %ss", self.lock.where, err,
                            self.timings.lease_duration)
                return False
            log.info("released the Lease %s", self.lock.where)
            return True


# ---------------------------------------------------------------- I/O: the leader label on our own Pod
class PodLabel:
    """The label the chart's Service selects on, and a pod-deletion cost, on this replica's own Pod."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self._core = client.CoreV1Api(api)
        self.namespace, self.name = namespace, name

    def set(self, leading: bool) -> None:
        """Label the Pod (leading) or remove the label (not leading); KubeError naming the RBAC fix when refused."""
        patch = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None},
                              "annotations": {DELETION_COST: LEADER_DELETION_COST if leading else None}}}
        try:
            self._core.patch_namespaced_pod(self.name, self.namespace, patch, _request_timeout=TIMINGS.request_timeout)
        except (ApiException, *_UNREACHABLE) as err:
            raise error_for(Call(f"{'label' if leading else 'unlabel'} Pod {self.namespace}/{self.name} ({LEADER_LABEL})", POD, "patch",
                                 self.name), err) from err
