from __future__ import annotations

from fmop.conditions import Cond, find, merge

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_new_condition_gets_now_and_is_a_transition() -> None:
    out, transitions = merge([], [Cond("Ready", "False", "NoVersion", "m")], 3, T0)
    assert out == [{"type": "Ready", "status": "False", "reason": "NoVersion", "message": "m", "lastTransitionTime": T0, "observedGeneration": 3}]
    assert [t.cond.type for t in transitions] == ["Ready"] and transitions[0].previous is None


def test_same_status_keeps_transition_time_but_updates_reason_and_message() -> None:
    current, _ = merge([], [Cond("Ready", "False", "NoVersion", "old")], 1, T0)
    out, transitions = merge(current, [Cond("Ready", "False", "Other", "new")], 2, T1)
    assert out[0]["lastTransitionTime"] == T0
    assert out[0]["reason"] == "Other" and out[0]["message"] == "new" and out[0]["observedGeneration"] == 2
    assert transitions == []


def test_status_flip_moves_transition_time() -> None:
    current, _ = merge([], [Cond("Ready", "False", "NoVersion")], 1, T0)
    out, transitions = merge(current, [Cond("Ready", "True", "VersionAvailable")], 1, T1)
    assert out[0]["lastTransitionTime"] == T1
    assert transitions[0].previous == "False"


def test_conditions_owned_by_others_are_kept() -> None:
    current = [{"type": "Progressing", "status": "True", "reason": "X", "message": "", "lastTransitionTime": T0}]
    out, _ = merge(current, [Cond("Ready", "True", "R")], None, T1)
    assert find(out, "Progressing") == current[0]
    assert "observedGeneration" not in find(out, "Ready")  # type: ignore[operator]
