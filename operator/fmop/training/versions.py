"""Carrying a training plan out so that status.versions never loses an entry.

A FoundationModel's or TaskAdapter's status is one decision of the planner (versions, latestVersion,
phase and conditions agree with each other: the gate compares with the latest version, pruning keeps
it), so it is written whole, with optimistic concurrency: the status goes back with the
resourceVersion it was planned from, and a write that lost a race (HTTP 409) is not retried as is but
re-planned from a fresh read. A version another writer recorded in between (another replica, a
person, a CI job) is then in the list the planner starts from, so no entry is lost.

Server-side apply per writer would merge entries by key, but a writer could then only remove the
entries it applied itself (pruning by versionHistoryLimit, a person's entries) and two replicas share
one field manager; the CRD still marks `versions` a list-map keyed by `version`, so that keys stay
unique and a person can add one entry with `kubectl apply --server-side --subresource=status`.

    synced = sync(store, body, plan_for, now)   # Contended after ATTEMPTS lost races: retry later

Order, per attempt: read log tail (if the plan asks), write the status (only a real change), then act:
create the Workflow, delete the ones the plan deletes and a fresh read does not list. Nothing is
carried out for a plan that lost its race. I/O goes only through the `Store` it is given (the
handler adapts fmop.kube), so every interleaving is tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fmop.assess import KSTATUS, Verdict
from fmop.conditions import Transition, merge
from fmop.training.planner import Plan, StepLog, with_log
from fmop.training.render import LABEL_VERSION

Obj = dict[str, Any]
ATTEMPTS = 5  # writes that may lose a race before the reconcile gives up (and is retried later)
# Conditions whose transitions post no Event (as for the Rollout): Reconciling turns with every training, and Stalled
# turns True together with the condition that says why (Accepted, ResolvedRefs, Training), whose Event has the right
# severity; the handler would post Stalled=True as Normal and its clearing as a Warning.
QUIET = KSTATUS


class Store(Protocol):
    """The reads and writes for one object and its training Workflows."""

    def read(self) -> Obj | None:
        """The object as it is now; None when it is gone."""

    def workflows(self) -> list[Obj]:
        """Its training Workflows as found."""

    def log_tail(self, step: StepLog) -> str:
        """The tail of a failed step's log ("" when there is none)."""

    def write_status(self, obj: Obj, status: Obj) -> bool:
        """Replace the status of `obj` with `status` if obj's resourceVersion is still current; False when it is not."""

    def create(self, workflow: Obj) -> None:
        """Create (apply) a Workflow."""

    def delete(self, workflow: str) -> None:
        """Delete a Workflow by name (gone already is fine)."""


class Contended(RuntimeError):
    """Every attempt lost its race with another writer: worth retrying a little later."""


@dataclass(frozen=True)
class Synced:
    """What one sync did."""

    result: Literal["changed", "unchanged", "gone"]
    transitions: list[Transition] = field(default_factory=list)  # conditions that changed status: worth an Event
    deleted: tuple[str, ...] = ()  # Workflows deleted
    conflicts: int = 0  # writes that lost a race and were re-planned


@dataclass(frozen=True)
class StatusUpdate:
    """The whole status to write, and the conditions whose status changed."""

    status: Obj
    transitions: list[Transition]  # of the conditions that are not QUIET


def status_update(status: Obj, verdict: Verdict, generation: int | None, now: str) -> StatusUpdate | None:
    """The whole status `verdict` asks for, from the status as read (fields the verdict does not name are kept,
    None removes one); None when nothing changes."""
    conditions, transitions = merge(list(status.get("conditions") or []), verdict.conditions, generation, now)
    wanted = {"phase": verdict.phase, "conditions": conditions, "observedGeneration": generation, "message": verdict.message,
              **verdict.extra}
    changes = {k: v for k, v in wanted.items() if status.get(k) != v}
    if not changes:
        return None
    return StatusUpdate({k: v for k, v in {**status, **changes}.items() if v is not None},
                        [t for t in transitions if t.cond.type not in QUIET])


def deletable(names: Iterable[str], workflows: list[Obj], status: Obj) -> tuple[str, ...]:
    """Of the Workflows a plan deletes, those that `status` (a fresh read) lists no version of: an entry names
    its Workflow, or (recorded by hand, naming none) has the Workflow's version."""
    versions = list(status.get("versions") or [])
    by_name = {str(v["workflow"]) for v in versions if v.get("workflow")}
    by_version = {str(v.get("version")) for v in versions if not v.get("workflow")}
    labels = {str(w.get("metadata", {}).get("name", "")): (w.get("metadata", {}).get("labels") or {}) for w in workflows}
    return tuple(n for n in names if n not in by_name and labels.get(n, {}).get(LABEL_VERSION) not in by_version)


def sync(store: Store, obj: Obj, plan_for: Callable[[Obj, list[Obj]], Plan], now: str, attempts: int = ATTEMPTS) -> Synced:
    """Plan from `obj` (the object as read) and its Workflows, write the status with obj's resourceVersion,
    then create and delete what the plan says; a lost race reads both again and plans again.
    Contended when `attempts` writes in a row lose."""
    for attempt in range(attempts):
        if attempt:
            fresh = store.read()
            if fresh is None:
                return Synced("gone", conflicts=attempt)
            obj = fresh
        found = store.workflows()
        p = plan_for(obj, found)
        if p.read_log is not None:
            p = with_log(p, store.log_tail(p.read_log))
        update = status_update(obj.get("status") or {}, p.verdict, obj.get("metadata", {}).get("generation"), now)
        if update is not None and not store.write_status(obj, update.status):
            continue
        if p.create is not None:
            store.create(p.create)
        deleted: tuple[str, ...] = ()
        if p.delete:
            now_listed = store.read()
            deleted = deletable(p.delete, found, (now_listed or {}).get("status") or {}) if now_listed is not None else ()
            for name in deleted:
                store.delete(name)
        return Synced("changed" if update else "unchanged", update.transitions if update else [], deleted, conflicts=attempt)
    meta = obj.get("metadata", {})
    raise Contended(f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}: status changed under every one of {attempts} "
                    "writes (another writer is busy with it); the next reconcile plans again")
