"""The watch cache (fmop.cache) and the Rollout controller reading from it (issue 25, "Watch, don't poll").

The controller runs against the in-memory world of tests/unit/controller_world.py; the cache is fed the way
kopf's watch feeds it in the operator, here on demand, so a test can make the watch lag behind the API server.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from fmop.cache import Unsynced, WatchCache, newer
from fmop.kinds import FOUNDATION_MODEL, INFERENCE_SERVICE, ROLLOUT, TASK_ADAPTER, Kind
from fmop.rollout.controller import Controller
from tests.unit.controller_world import NAME, NS, Cluster, FakeKube, alert

KINDS = (ROLLOUT, FOUNDATION_MODEL, TASK_ADAPTER, INFERENCE_SERVICE)
V2 = {"foundationModel": {"name": "movielens", "version": "v2"}, "adapters": [{"name": "region-jp", "version": "v1"}]}


def _obj(name: str, rv: str, ns: str = NS, labels: dict[str, str] | None = None, **rest: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels or {}}, **rest}


def opened(*kinds: Kind) -> WatchCache:
    cache = WatchCache(KINDS)
    for k in kinds or KINDS:
        cache.serve(k)
    cache.open()
    return cache


# ---------------------------------------------------------------- the store
def test_a_body_is_replaced_only_by_a_newer_one() -> None:
    cache = opened()
    cache.seen(ROLLOUT, _obj("a", "7", spec={"x": 1}))
    cache.seen(ROLLOUT, _obj("a", "5", spec={"x": 0}))  # a watch event older than our own write's answer
    assert cache.get(ROLLOUT, NS, "a") == _obj("a", "7", spec={"x": 1})
    cache.seen(ROLLOUT, _obj("a", "8", spec={"x": 2}))
    assert (cache.get(ROLLOUT, NS, "a") or {})["spec"] == {"x": 2}
    assert newer(_obj("a", "not-a-number"), _obj("a", "9")), "an opaque resourceVersion cannot be ordered: the newest event wins"


def test_reads_are_copies_and_lists_filter_by_namespace_and_labels() -> None:
    cache = opened()
    cache.seen(INFERENCE_SERVICE, _obj("r-1", "1", labels={"fmops.dev/rollout": "r"}))
    cache.seen(INFERENCE_SERVICE, _obj("s-1", "2", labels={"fmops.dev/rollout": "s"}))
    cache.seen(INFERENCE_SERVICE, _obj("r-1", "3", ns="other", labels={"fmops.dev/rollout": "r"}))
    found = cache.list(INFERENCE_SERVICE, NS, {"fmops.dev/rollout": "r"})
    assert [o["metadata"]["name"] for o in found] == ["r-1"]
    found[0]["metadata"]["name"] = "changed by a caller"
    assert cache.list(INFERENCE_SERVICE, NS, {"fmops.dev/rollout": "r"})[0]["metadata"]["name"] == "r-1"
    cache.gone(INFERENCE_SERVICE, NS, "r-1")
    assert cache.list(INFERENCE_SERVICE, NS, {"fmops.dev/rollout": "r"}) == []


def test_a_kind_is_served_only_once_open_and_only_if_watched() -> None:
    cache = WatchCache(KINDS)
    cache.serve(ROLLOUT)
    with pytest.raises(Unsynced, match="not served from the watch cache yet"):
        cache.get(ROLLOUT, NS, "a")
    cache.open()
    assert cache.get(ROLLOUT, NS, "a") is None
    with pytest.raises(Unsynced):  # KServe's CRDs were not installed: kopf does not watch InferenceServices
        cache.list(INFERENCE_SERVICE, NS, {})


# ---------------------------------------------------------------- the controller on top
class CountingKube(FakeKube):
    """FakeKube that counts the reads that reach 'the API server'."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads[f"get {kind.kind}"] += 1
        return super().get(kind, namespace, name)

    def list(self, kind: Kind, namespace: str, labels: Any) -> list[dict[str, Any]]:
        self.reads[f"list {kind.kind}"] += 1
        return super().list(kind, namespace, labels)


class Watch:
    """kopf's watch, delivered on demand: `deliver()` hands the cache every object as the API server holds it now."""

    def __init__(self, kube: FakeKube, cache: WatchCache) -> None:
        self.kube, self.cache = kube, cache
        self.delivered: set[tuple[str, str, str]] = set()

    def deliver(self, kinds: tuple[Kind, ...] = KINDS) -> None:
        plurals = {k.plural: k for k in kinds}
        for key, obj in list(self.kube.objects.items()):
            if key[0] in plurals:
                self.cache.seen(plurals[key[0]], copy.deepcopy(obj))
        for key in self.delivered - set(self.kube.objects):  # DELETED events
            self.cache.gone(plurals[key[0]], key[1], key[2])
        self.delivered = {k for k in self.kube.objects if k[0] in plurals}


def cached_world() -> tuple[Cluster, WatchCache, Watch]:
    c = Cluster(kube=CountingKube())
    cache = opened()
    watch = Watch(c.kube, cache)
    watch.deliver()
    c.controller = Controller(c.kube, traffic_for=lambda routing: c.traffic, analysis=c.analysis, clock=lambda: c.now,
                              crash=c._crash, cache=cache)
    restart = c.restart

    def restart_with_cache() -> None:  # a new process: a new cache, filled by kopf's first listing
        restart()
        fresh = opened()
        Watch(c.kube, fresh).deliver()
        watch.cache = fresh
        c.controller = replace_cache(c.controller, fresh)

    c.restart = restart_with_cache  # type: ignore[method-assign]
    return c, cache, watch


def promote(c: Cluster, deliver: Callable[[], None], tick: Callable[[], object] | None = None) -> None:
    """Reconcile (then let the watch deliver) until revision 1 is Promoted."""
    for _ in range(40):
        (tick or c.reconcile)()
        deliver()
        if c.phase()[0] == "Promoted":
            return
    raise AssertionError(f"not Promoted in 40 reconciles: {c.status().get('message')}")


def replace_cache(ctl: Controller, cache: WatchCache) -> Controller:
    return Controller(ctl.kube, traffic_for=ctl.traffic_for, analysis=ctl.analysis, clock=ctl.clock, crash=ctl.crash, cache=cache)


def test_a_steady_rollout_is_reconciled_without_reading_the_api_server() -> None:
    """The old controller read the Rollout, its FoundationModel, its TaskAdapters and its InferenceServices from the API
    server at every reconcile of every Rollout (500 Rollouts: 197.8 requests/s)."""
    c, _, watch = cached_world()
    promote(c, watch.deliver)
    assert c.phase()[0] == "Promoted"
    kube = c.kube
    assert isinstance(kube, CountingKube)
    kube.reads.clear()
    for _ in range(5):
        c.reconcile()
        watch.deliver()
    assert sum(kube.reads.values()) == 0, f"reads that reached the API server: {dict(kube.reads)}"


def test_our_own_write_is_read_back_without_waiting_for_the_watch() -> None:
    """The watch never delivers a Rollout here: every status write the controller made must still be what it reads next,
    or each reconcile would conflict (and read the API server) or, worse, decide from its own old status."""
    c, cache, watch = cached_world()
    promote(c, lambda: watch.deliver((FOUNDATION_MODEL, TASK_ADAPTER, INFERENCE_SERVICE)))
    assert c.phase()[0] == "Promoted"
    kube = c.kube
    assert isinstance(kube, CountingKube)
    assert kube.reads["get Rollout"] == 0, "a status write conflicted, so the controller had to re-read the API server"
    assert cache.get(ROLLOUT, NS, NAME) == c.kube.objects[("rollouts", NS, NAME)]


def test_a_cache_behind_the_api_server_costs_one_conflict_then_a_fresh_read() -> None:
    """Someone else wrote the Rollout's status; the watch has not delivered it yet. The stale resourceVersion makes the
    status write a 409, and the retry reads the API server: nothing is decided twice from the stale copy."""
    c, cache, watch = cached_world()
    promote(c, watch.deliver)
    c.edit_spec(model=V2)  # the user's edit: the watch delivers it
    watch.deliver()
    c.kube.objects[("rollouts", NS, NAME)]["metadata"]["resourceVersion"] = "999999"  # another writer; no event yet
    kube = c.kube
    assert isinstance(kube, CountingKube)
    kube.reads.clear()
    out = c.reconcile()
    assert out is not None and out.result == "changed" and c.status()["canary"]["revision"] == 2
    assert kube.reads["get Rollout"] == 1
    assert (cache.get(ROLLOUT, NS, NAME) or {})["metadata"]["resourceVersion"] == c.kube.objects[("rollouts", NS, NAME)]["metadata"]["resourceVersion"]


def test_a_fresh_read_heals_an_inference_service_deletion_the_watch_missed() -> None:
    """kopf relists after a broken watch without a DELETED event for what vanished meanwhile. The cache then holds an
    InferenceService that is gone; the daemon's fresh read at each idle wake drops it, and the controller recreates it."""
    c, cache, watch = cached_world()
    promote(c, watch.deliver)
    isvc = next(k for k in c.kube.objects if k[0] == INFERENCE_SERVICE.plural)
    del c.kube.objects[isvc]  # deleted while the watch was down: never delivered
    c.reconcile()
    assert isvc not in c.kube.objects, "without a fresh read the controller believes the cache"
    c.controller.reconcile(NS, NAME, fresh=True)
    assert isvc in c.kube.objects, "the fresh read did not heal the missed deletion"
    assert cache.get(INFERENCE_SERVICE, isvc[1], isvc[2]) is not None


def test_an_unopened_cache_reads_the_api_server() -> None:
    """Before kopf has listed everything (the webhook can reconcile that early), reads go to the API server."""
    c = Cluster(kube=CountingKube())
    cache = WatchCache(KINDS)
    for k in KINDS:
        cache.serve(k)
    c.controller = replace_cache(c.controller, cache)
    c.reconcile()
    kube = c.kube
    assert isinstance(kube, CountingKube)
    assert kube.reads["get Rollout"] == 1 and kube.reads["list InferenceService"] == 1


@pytest.mark.parametrize("lag", [1, 2, 3])
def test_a_lagging_watch_never_undoes_a_rollback(lag: int) -> None:
    """The watch delivers only every `lag` reconciles: the alert rollback still holds, and the Rollout still ends
    where it would with no cache."""
    c, _, watch = cached_world()
    ticks = 0

    def tick(**kwargs: Any) -> None:
        nonlocal ticks
        c.reconcile(**kwargs)
        ticks += 1
        if ticks % lag == 0:
            watch.deliver()

    promote(c, lambda: None, tick)
    c.edit_spec(model=V2)
    watch.deliver()
    for _ in range(80):
        tick()
        if c.phase()[0] == "Progressing" and c.phase()[2] == 50 and c.traffic.state is not None and c.traffic.state.canary_weight == 50:
            break
    assert c.phase()[2] == 50
    start = len(c.traffic.history)
    tick(alerts=(alert("CanaryErrors", "fp-1", c.now),))
    for _ in range(10):
        tick()
    assert c.phase() == ("RolledBack", 2, 0)
    assert [t.canary_weight for t in c.traffic.history[start:]] == [0], "the canary got traffic back after the rollback"
