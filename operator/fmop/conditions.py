"""Kubernetes-style conditions, merged without I/O.

A condition's lastTransitionTime changes only when its status changes, as in metav1.Condition;
reason and message may change in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    """A condition as a decision states it, before it carries timestamps."""

    type: str
    status: Status
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Transition:
    """A condition whose status changed (or appeared): worth an Event."""

    cond: Cond
    previous: str | None


def merge(current: list[dict[str, Any]], wanted: list[Cond], generation: int | None, now: str) -> tuple[list[dict[str, Any]], list[Transition]]:
    """Return the new condition list (wanted types replace, others are kept) and the transitions."""
    by_type = {c.get("type"): c for c in current}
    out: list[dict[str, Any]] = []
    transitions: list[Transition] = []
    for cond in wanted:
        old = by_type.pop(cond.type, None)
        changed = old is None or old.get("status") != cond.status
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
        if changed:
            transitions.append(Transition(cond, None if old is None else str(old.get("status"))))
    out.extend(by_type.values())  # conditions other parts of the operator own
    return out, transitions


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
