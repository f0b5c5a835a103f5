"""`kubectl fmops status`'s rendering, pure: the timeline for each kind of moment in a Rollout's life.

The plugin against a real API server is tested in tests/integration/test_kubectl_plugin.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from fmop.cli import _ago, parser, render
from fmop.rollout.clock import ts
from tests.unit.rollout_world import T0, World, make_spec, stable_world, with_model

BASE = make_spec()  # steps: setWeight 5, analysis error-rate, setWeight 25, setWeight 100


def rollout(w: World, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "team-a", "name": "recommender", "annotations": annotations},
            "spec": w.spec.model_dump(mode="json", exclude_none=True), "status": w.status.model_dump(mode="json", exclude_none=True)}


def steps(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("Steps") + 1
    return lines[start:lines.index("", start)]


def test_pending_waits_before_the_first_step() -> None:
    w = stable_world(BASE, new_isvcs_ready=True)
    w.set_ready(False)
    w.new_isvcs_ready = False
    w.spec = with_model(BASE, "v2")
    w.tick()
    text = render(rollout(w), [], w.now)
    assert text.startswith("Rollout team-a/recommender   revision 2   Pending   provider gatewayAPI\n")
    assert steps(text)[0] == "  [>] before the first step: waiting for the new revision's InferenceService to become Ready"
    assert "  now      revision 2, before its first step: waiting for the InferenceService of revision 2" in text
    assert "  held     since 2026-01-01T00:03:00Z (0s; spec.progressDeadline 10m)" in text


def test_promoted_marks_every_step_done() -> None:
    w = stable_world(BASE)
    w.spec = with_model(BASE, "v2")
    for _ in range(20):
        w.tick()
        if w.status.phase == "Promoted":
            break
    assert w.status.phase == "Promoted"
    text = render(rollout(w), [], w.now)
    assert steps(text) == ["  [x] 0   setWeight 5%", "  [x] 1   analysis error-rate", "  [x] 2   setWeight 25%", "  [x] 3   setWeight 100%",
                           "  [x] promoted"]
    assert "  warm     revision 1    kept until" in text


def test_requests_show_whether_the_operator_acted() -> None:
    w = stable_world(BASE)
    w.promote = "p1"
    w.tick()
    text = render(rollout(w, **{"fmops.dev/promote": "p1", "fmops.dev/retry": "r9"}), [], w.now)
    assert "  promote  fmops.dev/promote=p1   last acted on: p1   acted on" in text
    assert "  retry    fmops.dev/retry=r9   last acted on: -   waiting for the operator" in text


def test_events_are_shown_with_their_age() -> None:
    w = stable_world(BASE)
    event = {"type": "Warning", "reason": "RolledBack", "message": "all traffic on stable", "count": 3,
             "lastTimestamp": ts(w.now - timedelta(minutes=2, seconds=5))}
    text = render(rollout(w), [event], w.now)
    assert "   2m05s ago  Warning  RolledBack         all traffic on stable (x3)" in text


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (59, "59s"), (61, "1m01s"), (3600 * 2 + 60 * 3, "2h03m"), (86400 * 3, "3d")])
def test_ages(seconds: int, shown: str) -> None:
    assert _ago(ts(T0), T0 + timedelta(seconds=seconds)) == shown


def test_connection_flags_go_before_or_after_the_command() -> None:
    before = parser().parse_args(["-n", "a", "--context", "c", "status", "r"])
    after = parser().parse_args(["status", "r", "-n", "b", "--kubeconfig", "k"])
    assert (before.namespace, before.context, before.kubeconfig) == ("a", "c", None)
    assert (after.namespace, after.context, after.kubeconfig) == ("b", None, "k")
