"""Writing status.versions with optimistic concurrency (fmop.training.versions), against an in-memory
store that behaves as the API server does at its edge: a status write with a stale resourceVersion is
refused, every accepted write bumps it. Writers interleave the way two replicas, or the operator and a
person recording a version by hand, do; the planner is the real one."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import pytest

from fmop.api import FoundationModel
from fmop.assess import Verdict
from fmop.conditions import Cond
from fmop.training import planner
from fmop.training.planner import Plan, StepLog
from fmop.training.render import LABEL_VERSION, Target, render_foundation_model
from fmop.training.versions import ATTEMPTS, Contended, deletable, status_update, sync
from tests.unit.test_training import IMAGE, NOW, finished, fm_obj

Obj = dict[str, Any]


class FakeStore:
    """One object and its Workflows, with the API server's resourceVersion check on status writes."""

    def __init__(self, obj: Obj, workflows: list[Obj]) -> None:
        self.obj = copy.deepcopy(obj)
        self.obj["metadata"]["resourceVersion"] = "1"
        self.wfs = {w["metadata"]["name"]: copy.deepcopy(w) for w in workflows}
        self.lock = threading.Lock()
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.writes = 0
        self.before_write: Callable[[], None] = lambda: None  # what another writer does just before ours lands
        self.after_write: Callable[[], None] = lambda: None  # ... or just after

    # what the other writers do
    def record_by_hand(self, entry: Obj) -> None:
        """A person (or CI) adds a version the way `kubectl apply --server-side --subresource=status` would."""
        with self.lock:
            status = self.obj.setdefault("status", {})
            status["versions"] = [*(status.get("versions") or []), entry]
            self._bump()

    def _bump(self) -> None:
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)

    # the Store protocol
    def read(self) -> Obj | None:
        with self.lock:
            return copy.deepcopy(self.obj)

    def workflows(self) -> list[Obj]:
        with self.lock:
            return copy.deepcopy(list(self.wfs.values()))

    def log_tail(self, step: StepLog) -> str:
        return ""

    def write_status(self, obj: Obj, status: Obj) -> bool:
        self.before_write()
        with self.lock:
            if obj["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
                return False
            self.obj["status"] = copy.deepcopy(status)
            self.writes += 1
            self._bump()
        self.after_write()
        return True

    def create(self, workflow: Obj) -> None:
        with self.lock:
            self.created.append(workflow["metadata"]["name"])
            self.wfs[workflow["metadata"]["name"]] = copy.deepcopy(workflow)

    def delete(self, workflow: str) -> None:
        with self.lock:
            self.deleted.append(workflow)
            self.wfs.pop(workflow, None)

    @property
    def versions(self) -> list[str]:
        return [str(v["version"]) for v in (self.obj.get("status") or {}).get("versions") or []]


def fm_plan(obj: Obj, workflows: list[Obj]) -> Plan:
    return planner.plan(obj, workflows, NOW, image=IMAGE)


def entry(version: str, workflow: str = "", generation: int | None = 1) -> Obj:
    return {"version": version, "artifactUri": f"pvc://fmop-models/ns/foundationmodels/movielens/{version}/triton",
            "metrics": {"NDCG@10": 0.1}, **({"workflow": workflow} if workflow else {}),
            **({"specGeneration": generation} if generation is not None else {})}


def trained(version: str, generation: int = 1) -> Obj:
    """A succeeded training Workflow of the FoundationModel, as rendered for `version`."""
    fm = FoundationModel.model_validate(fm_obj(generation=generation))
    return finished(render_foundation_model(fm, Target("ns", "movielens", "fm-uid", generation, version), IMAGE), "Succeeded", {"NDCG@10": 0.12})


def with_v1() -> Obj:
    """The FoundationModel with v1 recorded by its Workflow."""
    return fm_obj(status={"latestVersion": "v1", "versions": [entry("v1", "movielens-v1-g1")]})


# ---------------------------------------------------------------- pure parts
def test_status_update_is_none_when_nothing_changes_and_keeps_what_the_verdict_does_not_name() -> None:
    verdict = Verdict("Ready", [Cond("Ready", "True", "VersionAvailable", "v1")], "latest version v1", {"workflowName": None})
    first = status_update({"latestVersion": "v1", "workflowName": "old"}, verdict, 3, NOW)
    assert first is not None
    assert first.status["latestVersion"] == "v1" and "workflowName" not in first.status  # None removes, as a merge patch did
    assert first.status["observedGeneration"] == 3 and [t.cond.type for t in first.transitions] == ["Ready"]
    assert status_update(first.status, verdict, 3, "2027-01-01T00:00:00Z") is None


@pytest.mark.parametrize(("listed", "kept"), [
    pytest.param([], set(), id="nothing-listed-all-go"),
    pytest.param([entry("v2", "movielens-v2-g1")], {"movielens-v2-g1"}, id="an-entry-names-its-workflow"),
    pytest.param([entry("v2", generation=None)], {"movielens-v2-g1"}, id="recorded-by-hand-by-version"),
    pytest.param([entry("v2", "movielens-v2-g2")], set(), id="same-version-of-another-generation-is-not-it"),
])
def test_a_workflow_is_deleted_only_when_a_fresh_read_lists_no_version_of_it(listed: list[Obj], kept: set[str]) -> None:
    wfs = [{"metadata": {"name": f"movielens-v{i}-g1", "labels": {LABEL_VERSION: f"v{i}"}}} for i in (1, 2)]
    names = ("movielens-v1-g1", "movielens-v2-g1")
    assert set(deletable(names, wfs, {"versions": listed})) == set(names) - kept


# ---------------------------------------------------------------- two writers
def test_a_version_recorded_by_another_writer_after_our_read_is_kept() -> None:
    store = FakeStore(with_v1(), [trained("v2")])
    stale = store.read()
    assert stale is not None
    store.record_by_hand(entry("v3", generation=None))  # lands between our read and our write
    synced = sync(store, stale, fm_plan, NOW)
    assert synced.conflicts == 1 and synced.result == "changed"
    assert store.versions == ["v1", "v3", "v2"]  # nothing lost; ours recorded on top of theirs


def test_two_operator_writers_from_the_same_stale_copy_record_the_version_once() -> None:
    """Two replicas reconcile the same object at once: both plan v2 from the same copy, one write wins, the
    other is refused, reads again and finds v2 recorded: no entry lost, none doubled."""
    store = FakeStore(with_v1(), [trained("v2")])
    stale = store.read()
    assert stale is not None
    both_planned = threading.Barrier(2)
    store.before_write = lambda: both_planned.wait(timeout=5) if store.writes == 0 else None
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(sync(store, copy.deepcopy(stale), fm_plan, NOW))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(r.conflicts for r in results) == [0, 1] and sorted(r.result for r in results) == ["changed", "unchanged"]
    assert store.versions == ["v1", "v2"] and store.writes == 1


def test_a_version_number_another_writer_took_is_recorded_under_the_next_free_one() -> None:
    store = FakeStore(with_v1(), [trained("v2")])
    stale = store.read()
    assert stale is not None
    store.record_by_hand(entry("v2", generation=None))  # a person imported a v2 of their own
    sync(store, stale, fm_plan, NOW)
    assert store.versions == ["v1", "v2", "v3"]
    ours = (store.obj["status"]["versions"])[-1]
    assert ours["workflow"] == "movielens-v2-g1" and "/v2/" in ours["artifactUri"]  # where the Workflow wrote it
    assert store.obj["status"]["latestVersion"] == "v3"


def test_a_stale_plan_is_not_carried_out() -> None:
    """Planned from a copy without versions, the sync would submit v1; someone recorded v1 meanwhile, so the
    fresh plan has nothing to train: no Workflow is created."""
    store = FakeStore(fm_obj(), [])
    stale = store.read()
    assert stale is not None
    store.record_by_hand(entry("v1", generation=None))
    synced = sync(store, stale, fm_plan, NOW)
    assert synced.conflicts == 1 and store.created == []


def test_the_workflow_of_a_version_listed_after_our_write_is_not_deleted() -> None:
    """v1's Workflow is pruned by our plan (versionHistoryLimit 1), but between our write and the delete
    another writer lists a version on that Workflow again: the fresh read keeps it."""
    obj = fm_obj(status={"latestVersion": "v1", "versions": [entry("v1", "movielens-v1-g1")]}, versionHistoryLimit=1)
    v1 = trained("v1")
    store = FakeStore(obj, [v1, trained("v2")])
    store.after_write = lambda: store.record_by_hand(entry("v1", generation=None)) if store.versions == ["v2"] else None
    synced = sync(store, store.read() or {}, fm_plan, NOW)
    assert synced.deleted == () and "movielens-v1-g1" in store.wfs
    # without that writer the same plan deletes it
    store = FakeStore(obj, [v1, trained("v2")])
    assert sync(store, store.read() or {}, fm_plan, NOW).deleted == ("movielens-v1-g1",)


def test_every_write_losing_its_race_is_contended_and_carries_nothing_out() -> None:
    store = FakeStore(fm_obj(), [])
    store.before_write = lambda: store.record_by_hand(entry("v9", generation=None))  # always someone first
    with pytest.raises(Contended, match=f"every one of {ATTEMPTS} writes"):
        sync(store, store.read() or {}, fm_plan, NOW)
    assert store.writes == 0 and store.created == [] and store.deleted == []


def test_nothing_is_written_when_nothing_changes() -> None:
    store = FakeStore(fm_obj(), [])
    assert sync(store, store.read() or {}, fm_plan, NOW).result == "changed" and store.created == ["movielens-v1-g1"]
    assert sync(store, store.read() or {}, fm_plan, NOW).result == "changed"  # submitted -> running
    again = sync(store, store.read() or {}, fm_plan, NOW)
    assert again.result == "unchanged" and store.writes == 2


def test_an_object_deleted_during_a_retry_is_gone() -> None:
    store = FakeStore(fm_obj(), [])
    stale = store.read() or {}
    store.record_by_hand(entry("v1", generation=None))
    store.read = lambda: None  # type: ignore[method-assign]
    assert sync(store, stale, fm_plan, NOW).result == "gone"


def test_reconciling_and_stalled_are_written_but_post_no_event() -> None:
    """kstatus conditions change with every training (Reconciling) and together with the condition that says why
    (Stalled): their transitions are left out of Synced.transitions, so the handler posts no Event for them."""
    store = FakeStore(fm_obj(), [])
    synced = [sync(store, store.read() or {}, fm_plan, NOW)]  # submitted: Reconciling appears, True
    wf = store.wfs["movielens-v1-g1"]
    store.wfs[wf["metadata"]["name"]] = finished(wf, "Failed")
    synced.append(sync(store, store.read() or {}, fm_plan, NOW))  # failed: Reconciling False, Stalled True
    status = (store.read() or {})["status"]
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"] if c["type"] in ("Reconciling", "Stalled")} == \
           {"Reconciling": ("False", "WorkflowFailed"), "Stalled": ("True", "WorkflowFailed")}
    told = [(t.cond.type, t.cond.status) for s in synced for t in s.transitions]
    assert ("Training", "True") in told and ("Training", "False") in told, told
    assert not [t for t in told if t[0] in ("Reconciling", "Stalled")], told


def test_status_update_leaves_kstatus_transitions_out() -> None:
    verdict = Verdict("Training", [Cond("Ready", "False", "NoVersion", ""), Cond("Reconciling", "True", "WorkflowRunning", "training"),
                                   Cond("Stalled", "False", "NotStalled", "")], "training")
    update = status_update({}, verdict, 1, NOW)
    assert update is not None and [c["type"] for c in update.status["conditions"]] == ["Ready", "Reconciling", "Stalled"]
    assert [t.cond.type for t in update.transitions] == ["Ready"]
