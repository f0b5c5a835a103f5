"""Leader election (fmop.leader): the rules case by case, then two electors on one in-memory Lease
with a hand-driven clock (the store fakes the API server's edge: resourceVersion and 409, nothing more)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fmop.kube import Conflict, KubeError
from fmop.leader import (
    LEADER_LABEL,
    Elector,
    Held,
    Record,
    Snapshot,
    WATCHDOG_INTERVAL,
    Timings,
    decide,
    leadership,
    lease_namespace,
    lease_spec,
    micro_time,
    must_stop,
    readiness,
    released,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=30)
ME, OTHER = "fm-operator-a-1f2e3d", "fm-operator-b-9c8b7a"
HELD_BY_OTHER = Record(OTHER, 10, T0, T0 + timedelta(seconds=20), 3)


@pytest.mark.parametrize(("found", "observed_at", "clock", "action", "holder", "transitions"), [
    pytest.param(None, 0.0, 100.0, "create", ME, 0, id="no-lease-yet-create-it-holding-it"),
    pytest.param(replace(HELD_BY_OTHER, holder=ME), 99.0, 100.0, "renew", ME, 3, id="ours-renew-keeping-transitions"),
    pytest.param(Record("", 1, T0, T0, 3), 99.9, 100.0, "acquire", ME, 4, id="released-take-it-at-once"),
    pytest.param(HELD_BY_OTHER, 95.0, 100.0, "wait", OTHER, 3, id="held-and-seen-renewed-5s-ago-wait"),
    pytest.param(HELD_BY_OTHER, 90.5, 100.0, "wait", OTHER, 3, id="held-9.5s-of-10s-still-wait"),
    pytest.param(HELD_BY_OTHER, 90.0, 100.0, "take-over", ME, 4, id="unchanged-for-its-full-duration-take-over"),
    pytest.param(replace(HELD_BY_OTHER, lease_duration_seconds=30), 80.0, 100.0, "wait", OTHER, 3,
                 id="the-holders-own-longer-duration-counts"),
    pytest.param(replace(HELD_BY_OTHER, lease_duration_seconds=0), 89.0, 100.0, "take-over", ME, 4,
                 id="no-duration-in-the-lease-ours-counts"),
])
def test_decide(found: Record | None, observed_at: float, clock: float, action: str, holder: str, transitions: int) -> None:
    d = decide(found, ME, now=NOW, observed_at=observed_at, clock=clock)
    assert d.action == action, d.why
    if action == "wait":
        assert d.record is None and OTHER in d.why
        return
    assert d.record is not None
    assert (d.record.holder, d.record.transitions, d.record.lease_duration_seconds, d.record.renew_time) == (holder, transitions, 10, NOW)
    assert d.record.acquire_time == (found.acquire_time if action == "renew" and found else NOW)


def test_a_renewtime_in_the_future_cannot_shorten_the_wait() -> None:
    """Only our own clock counts (client-go's observedTime): a holder whose clock runs ahead gets its full lease."""
    skewed = replace(HELD_BY_OTHER, renew_time=NOW + timedelta(hours=1))
    assert decide(skewed, ME, now=NOW, observed_at=95.0, clock=100.0).action == "wait"
    stale = replace(HELD_BY_OTHER, renew_time=NOW - timedelta(hours=1))  # nor can an old renewTime make it shorter
    assert decide(stale, ME, now=NOW, observed_at=95.0, clock=100.0).action == "wait"


def test_released_record_has_no_holder_and_keeps_the_count() -> None:
    r = released(HELD_BY_OTHER, NOW)
    assert (r.holder, r.lease_duration_seconds, r.transitions, r.renew_time) == ("", 1, 3, NOW)


@pytest.mark.parametrize(("renewed_at", "clock", "stop"), [
    pytest.param(100.0, 100.0, False, id="just-renewed"),
    pytest.param(100.0, 106.9, False, id="within-the-7s-deadline"),
    pytest.param(100.0, 107.0, True, id="deadline-reached"),
    pytest.param(100.0, 130.0, True, id="long-past"),
])
def test_must_stop(renewed_at: float, clock: float, stop: bool) -> None:
    assert must_stop(renewed_at, clock) is stop


def test_default_timings_hand_over_within_15s_and_stop_the_old_leader_first() -> None:
    t = Timings()
    worst_takeover = t.retry_period + t.lease_duration + t.retry_period  # last renewal seen late, then the poll's granularity
    assert worst_takeover <= 15
    assert t.renew_deadline + WATCHDOG_INTERVAL < t.lease_duration  # the old leader has exited before anyone may take over
    with pytest.raises(AssertionError, match="renew_deadline < lease_duration"):
        Timings(lease_duration=5, renew_deadline=7)


def test_lease_spec_is_what_the_api_server_parses() -> None:
    spec = lease_spec(Record(ME, 10, T0, T0.replace(microsecond=5), 2))
    assert spec == {"holderIdentity": ME, "leaseDurationSeconds": 10, "leaseTransitions": 2,
                    "acquireTime": "2026-03-01T12:00:00.000000Z", "renewTime": "2026-03-01T12:00:00.000005Z"}
    assert micro_time(datetime(2026, 3, 1, 14, 0, tzinfo=UTC).astimezone(UTC)) == "2026-03-01T14:00:00.000000Z"


# ---------------------------------------------------------------- what the probes answer
@pytest.mark.parametrize(("snap", "ready", "leads", "says"), [
    pytest.param(Snapshot(True, False, False, 0.5), True, False, "standby, ready to take over", id="standby-that-reads-the-lease"),
    pytest.param(Snapshot(True, False, False, None, "HTTP 403"), False, False, "HTTP 403", id="standby-that-cannot-read-the-lease"),
    pytest.param(Snapshot(True, False, False, 11.0, "unreachable"), False, False, "unreachable", id="standby-whose-last-read-is-stale"),
    pytest.param(Snapshot(True, False, False, 0.5, label_clear=False), False, False, LEADER_LABEL, id="standby-with-a-leftover-label"),
    pytest.param(Snapshot(True, True, False, 0.5), False, False, "not listed yet", id="new-leader-still-listing"),
    pytest.param(Snapshot(True, True, True, 0.5), True, True, "leader", id="leader-that-judges"),
    pytest.param(Snapshot(False, True, True, 0.0), True, True, "alone", id="no-election-acting-alone"),
])
def test_readiness_and_leadership(snap: Snapshot, ready: bool, leads: bool, says: str) -> None:
    ok, why = readiness(snap)
    assert ok is ready and says in why + leadership(snap)[1]
    assert leadership(snap)[0] is leads


def test_lease_namespace_order(tmp_path: Path) -> None:
    sa = tmp_path / "namespace"
    assert lease_namespace("given", {"POD_NAMESPACE": "pod"}, sa, lambda: "ctx") == "given"
    assert lease_namespace("", {"POD_NAMESPACE": "pod"}, sa, lambda: "ctx") == "pod"
    sa.write_text("from-the-service-account\n")
    assert lease_namespace("", {}, sa, lambda: "ctx") == "from-the-service-account"
    assert lease_namespace("", {}, tmp_path / "missing", lambda: "ctx") == "ctx"
    assert lease_namespace("", {}, tmp_path / "missing", lambda: "") == "default"


# ---------------------------------------------------------------- two electors on one Lease
class Store:
    """The Lease's edge as the API server has it: a resourceVersion per write, 409 on a stale one."""

    where = "ns/fm-operator"

    def __init__(self) -> None:
        self.record: Record | None = None
        self.version = 0
        self.down = False
        self.after_get: Callable[[], None] | None = None

    def _check(self) -> None:
        if self.down:
            raise KubeError("get Lease ns/fm-operator: API server unreachable", retry=True)

    def get(self) -> Held | None:
        self._check()
        held = None if self.record is None else Held(self.record, {"resourceVersion": str(self.version)})
        if self.after_get is not None:
            self.after_get()
        return held

    def create(self, record: Record) -> Held:
        self._check()
        if self.record is not None:
            raise Conflict("create Lease: already exists", retry=True, status=409)
        return self._write(record)

    def update(self, held: Held, record: Record) -> Held:
        self._check()
        if held.meta["resourceVersion"] != str(self.version):
            raise Conflict("update Lease: the object has been modified", retry=True, status=409)
        return self._write(record)

    def _write(self, record: Record) -> Held:
        self.record, self.version = record, self.version + 1
        return Held(record, {"resourceVersion": str(self.version)})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.t)


def electors(store: Store, clock: Clock, lost: list[str]) -> tuple[Elector, Elector]:
    return tuple(Elector(store, name, clock=clock, now=clock.wall, on_lost=lost.append) for name in (ME, OTHER))  # type: ignore[return-value]


def test_one_leads_the_other_waits_until_the_lease_expires() -> None:
    store, clock, lost = Store(), Clock(), []
    a, b = electors(store, clock, lost)
    assert a.try_acquire_or_renew() and a.leading
    assert not b.try_acquire_or_renew() and b.holder == ME
    for _ in range(20):  # a renews every second; b never gets it
        clock.t += 1
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    # a dies (no more renewals): b takes over only once the record has stood still for 10 s on its clock
    clock.t += 9
    assert not b.try_acquire_or_renew()
    clock.t += 1
    assert b.try_acquire_or_renew() and b.leading
    assert store.record is not None and (store.record.holder, store.record.transitions) == (OTHER, 1)


def test_a_released_lease_is_taken_at_the_next_try() -> None:
    store, clock, lost = Store(), Clock(), []
    a, b = electors(store, clock, lost)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert a.release() and not a.leading
    assert store.record is not None and store.record.holder == ""
    clock.t += 1
    assert b.try_acquire_or_renew()
    assert not a.release()  # not ours any more: nothing is written
    assert store.record.holder == OTHER


def test_two_standbys_racing_for_a_released_lease_one_wins() -> None:
    store, clock, lost = Store(), Clock(), []
    a, b = electors(store, clock, lost)
    store.record = Record("", 1, T0, T0, 5)

    def b_writes_first() -> None:  # after a has read, before a writes
        store.after_get = None
        assert b.try_acquire_or_renew()

    store.after_get = b_writes_first
    assert not a.try_acquire_or_renew() and "has been modified" in a.last_error
    assert store.record is not None and (store.record.holder, store.record.transitions) == (OTHER, 6)
    assert not a.try_acquire_or_renew() and a.holder == OTHER and not a.leading  # it reads again and waits


def test_a_leader_that_cannot_renew_stops_at_the_deadline() -> None:
    store, clock, lost = Store(), Clock(), []
    a, _ = electors(store, clock, lost)
    assert a.try_acquire_or_renew()
    store.down = True
    for _ in range(6):  # 1 s apart: still within the 7 s renew deadline
        clock.t += 1
        assert a.renew_once() is None
    clock.t += 1
    why = a.renew_once()
    assert why is not None and "could not renew the Lease ns/fm-operator for 7.0s" in why and "unreachable" in why


def test_a_leader_that_finds_another_holder_stops_at_once() -> None:
    """Within its deadline, but the Lease names someone else (another copy's clock, a person's edit): stop now."""
    store, clock, lost = Store(), Clock(), []
    a, _ = electors(store, clock, lost)
    assert a.try_acquire_or_renew()
    store._write(Record(OTHER, 10, clock.wall(), clock.wall(), 1))
    clock.t += 1
    assert a.renew_once() is None  # its cached resourceVersion is stale: 409; it reads again next round
    clock.t += 1
    assert a.renew_once() == f"the Lease ns/fm-operator is held by {OTHER} now"


@pytest.mark.parametrize("fault", ["down", "hangs"])
def test_the_renewer_gives_up_at_the_deadline_even_when_a_call_hangs(fault: str) -> None:
    store, lost, stuck = Store(), [], threading.Event()
    timings = Timings(lease_duration=1.0, renew_deadline=0.6, retry_period=0.1)
    a = Elector(store, ME, timings, on_lost=lost.append)
    assert a.try_acquire_or_renew()
    a._held = None  # the renewer reads the Lease each round, so a hanging read is a hanging round
    start = time.monotonic()
    if fault == "down":
        store.down = True
    else:
        store.after_get = lambda: stuck.wait(30)
    a.start_renewing()
    try:
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - start
    finally:
        stuck.set()
        a.stop_renewing()
    assert len(lost) == 1 and "could not renew the Lease ns/fm-operator for 0.6s" in lost[0]
    assert 0.6 <= took < timings.lease_duration, took  # before any standby may take over
