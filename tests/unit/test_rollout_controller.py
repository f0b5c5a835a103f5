"""The real rollout Controller against in-memory fakes (tests/unit/controller_world.py), tick by tick.

What the engine tests cannot show: the order of the writes, what a failed or conflicting status write
does, what a crash between two writes leaves behind, and the decisions the controller used to make
itself (FollowLatest, blocked, Ready, when to sample the split, no route to a canary that is not
Ready, when to look again).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest

from fmop.kube import KubeError
from fmop.rollout.controller import CRASH_ENV, CRASH_POINTS, StatusConflict, crash_from_env
from fmop.rollout.types import SetTraffic, SplitSample
from tests.unit.controller_world import NAME, NS, Cluster, alert, promoted_first

V2 = {"foundationModel": {"name": "movielens", "version": "v2"}, "adapters": [{"name": "region-jp", "version": "v1"}]}


def canary_at(weight: int, cluster: Cluster | None = None) -> Cluster:
    """Revision 2 (v2) in flight with `weight`% of traffic."""
    c = promoted_first(cluster or Cluster())
    c.edit_spec(model=V2)
    c.run_until(lambda c: c.phase()[0] == "Progressing" and c.phase()[2] == weight and c.traffic.state is not None
                and c.traffic.state.canary_weight == weight)
    return c


def reconcile_quietly(c: Cluster, **kwargs: object) -> None:
    try:
        c.reconcile(**kwargs)  # type: ignore[arg-type]
    except KubeError:
        pass


def canary_traffic_since(c: Cluster, start: int) -> list[int]:
    return [t.canary_weight for t in c.traffic.history[start:]]


# ---------------------------------------------------------------- finding 2: a rollback is never undone
def test_a_rollback_whose_status_write_is_refused_is_never_undone() -> None:
    """Status writes refused (an admission outage): the alert takes traffic off the canary at once, the reconcile
    fails (the webhook answers 500, so Alertmanager resends), and no later tick gives the canary its share back."""
    c = canary_at(50)
    c.kube.deny_status = True
    written = len(c.traffic.history)
    with pytest.raises(KubeError, match="could not be recorded in status: all traffic is on the stable"):
        c.controller.reconcile(NS, NAME, (alert("CanaryErrors", "fp-1", c.now),))
    assert c.traffic.state is not None and c.traffic.state.canary_weight == 0
    for _ in range(10):  # the daemon keeps ticking while status cannot be written
        reconcile_quietly(c)
    assert canary_traffic_since(c, written) == [0], "the canary got traffic back after the rollback"
    c.kube.deny_status = False
    c.reconcile()
    assert c.phase() == ("RolledBack", 2, 0)
    assert "alert CanaryErrors (fingerprint fp-1" in c.status()["rollbackReason"]
    assert canary_traffic_since(c, written) == [0]


def test_a_rollback_is_written_before_traffic_moves_and_traffic_comes_first_of_the_actions() -> None:
    c = canary_at(50)
    before = len(c.kube.writes)
    c.controller.reconcile(NS, NAME, (alert("CanaryErrors", "fp-1", c.now),))
    writes = c.kube.writes[before:]
    assert writes[:2] == ["status RolledBack", "traffic 0% to None"], writes


def test_a_conflict_that_persists_is_an_error_and_nothing_is_acted_on() -> None:
    """Three conflicts in a row used to return 'conflict' (the webhook answered 200 and the alert was marked handled)."""
    c = canary_at(50)
    c.kube.conflicts = 3
    with pytest.raises(StatusConflict, match="changed underneath 3 times in a row"):
        c.controller.reconcile(NS, NAME, (alert("CanaryErrors", "fp-1", c.now),))
    assert c.traffic.state is not None and c.traffic.state.canary_weight == 50, "acted on without recording"
    c.controller.reconcile(NS, NAME, (alert("CanaryErrors", "fp-1", c.now),))  # Alertmanager resends
    assert c.phase() == ("RolledBack", 2, 0) and c.traffic.state.canary_weight == 0


def test_a_conflict_that_clears_is_retried_on_fresh_data() -> None:
    c = canary_at(50)
    c.kube.conflicts = 2
    outcome = c.controller.reconcile(NS, NAME, (alert("CanaryErrors", "fp-1", c.now),))
    assert outcome.rolled_back and c.phase() == ("RolledBack", 2, 0)


def test_an_alert_on_a_rollout_whose_spec_no_longer_validates_takes_traffic_off_the_canary() -> None:
    c = canary_at(50)
    c.edit_spec(progressDeadline="soon")  # the API server would refuse it; older CRDs or an edit around them need not
    outcome = c.controller.reconcile(NS, NAME, (alert("CanaryErrors", "fp-1", c.now),))
    assert outcome.rolled_back and c.traffic.state is not None and c.traffic.state.canary_weight == 0
    status = c.status()
    assert status["phase"] == "RolledBack" and "alert CanaryErrors" in status["rollbackReason"]
    assert any(cond["type"] == "Accepted" and cond["status"] == "False" and "progressDeadline" in cond["message"] for cond in status["conditions"])
    for _ in range(3):
        c.reconcile()
    assert c.traffic.state.canary_weight == 0 and c.status()["history"][-1]["outcome"] == "RolledBack"


def test_a_spec_that_no_longer_validates_fails_the_canary_and_its_traffic_goes_to_the_stable() -> None:
    c = canary_at(50)
    c.edit_spec(progressDeadline="soon")
    c.reconcile()
    assert c.phase()[0] == "Failed" and c.traffic.state is not None and c.traffic.state.canary_weight == 0
    assert "spec does not validate: spec.progressDeadline" in c.status()["rollbackReason"]


# ---------------------------------------------------------------- crash points
Scenario = Callable[[Cluster], None]


def _scenario_promote(c: Cluster) -> None:
    c.run_until(lambda c: c.phase()[0] == "Promoted")
    for _ in range(3):
        c.reconcile()


def _scenario_analysis_failure(c: Cluster) -> None:
    c.analysis.script["error-rate"] = ["Failed"]
    c.run_until(lambda c: c.phase()[0] == "RolledBack")
    for _ in range(3):
        c.reconcile()


def _scenario_alert(c: Cluster) -> None:
    firing = alert("CanaryErrors", "fp-1", c.now)
    outcome = c.reconcile(minutes=0.1, alerts=(firing,))
    if outcome is None:  # the operator died answering the webhook: the delivery failed, a tick may come first
        c.reconcile()
        c.reconcile(minutes=0.1, alerts=(firing,))  # Alertmanager retries the failed delivery
    for _ in range(3):
        c.reconcile()


def _scenario_start(c: Cluster) -> None:
    c.edit_spec(model=V2)
    c.run_until(lambda c: c.phase()[2] == 10)


SCENARIOS: dict[str, tuple[int | None, str, Scenario]] = {  # weight to start from (None: v1 promoted), the phase whose writes are cut, what happens
    "start": (None, "Pending", _scenario_start),
    "step": (10, "Progressing", lambda c: c.run_until(lambda c: c.phase()[2] == 50)),
    "promote": (50, "Promoted", _scenario_promote),
    "analysis-failure-rollback": (10, "RolledBack", _scenario_analysis_failure),
    "alert-rollback": (50, "RolledBack", _scenario_alert),
}


def _run(scenario: str, point: str | None) -> Cluster:
    weight, phase, play = SCENARIOS[scenario]
    c = canary_at(weight) if weight is not None else promoted_first(Cluster())
    c.crash_at = (point, phase) if point else None
    c.marks = len(c.traffic.history), len(c.kube.events)  # type: ignore[attr-defined]
    play(c)
    return c


def _end(c: Cluster) -> tuple[object, ...]:
    s = c.status()
    return (s["phase"], s["stable"]["revision"], s.get("canary", {}).get("revision") if s.get("canary") else None, s["canaryWeight"],
            [h["outcome"] for h in s["history"]], c.traffic.state)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_any_point_changes_nothing_but_the_timing(scenario: str, point: str) -> None:
    """Killed right after any write of the transition, then restarted from what is in the cluster: the Rollout ends
    where it would have without the kill, no Event or history entry twice, and a recorded rollback is never undone."""
    baseline = _run(scenario, None)
    crashed = _run(scenario, point)
    assert _end(crashed) == _end(baseline)
    start_traffic, start_events = crashed.marks  # type: ignore[attr-defined]
    base_traffic, base_events = baseline.marks  # type: ignore[attr-defined]
    reasons = Counter(e[1] for e in crashed.kube.events[start_events:])
    assert reasons <= Counter(e[1] for e in baseline.kube.events[base_events:]), (reasons, point)
    if SCENARIOS[scenario][1] == "RolledBack":
        weights = canary_traffic_since(crashed, start_traffic)
        first_zero = weights.index(0)
        assert all(w == 0 for w in weights[first_zero:]), f"traffic went back to the canary after the rollback: {weights}"


def test_every_crash_point_is_reached_by_some_scenario() -> None:
    reached = {p for s in SCENARIOS for p in CRASH_POINTS if _run(s, p).crashes}
    assert reached == set(CRASH_POINTS)


def test_the_crash_switch_is_off_unless_set_and_refuses_unknown_points() -> None:
    crash_from_env({})("status-written", "RolledBack")  # nothing happens
    with pytest.raises(ValueError, match="unknown crash point 'before-everything'"):
        crash_from_env({CRASH_ENV: "before-everything"})


# ---------------------------------------------------------------- decisions the controller used to make itself
def test_follow_latest_serves_the_newest_complete_bundle_pinned() -> None:
    c = promoted_first(Cluster())
    c.edit_spec(model={"foundationModel": {"name": "movielens", "versionPolicy": "FollowLatest"}, "adapters": [{"name": "region-jp"}]})
    c.reconcile()
    s = c.status()
    assert s["canary"]["model"]["foundationModel"] == {"name": "movielens", "version": "v3", "versionPolicy": "Pinned", "allowHeldBack": False}


def test_nothing_is_served_while_the_references_do_not_resolve() -> None:
    c = Cluster()
    c.edit_spec(model={"foundationModel": {"name": "movielens", "version": "v9"}, "adapters": []})
    outcome = c.reconcile()
    assert outcome is not None and outcome.result == "blocked"
    assert c.kube.writes == ["status Pending"] and c.traffic.history == []
    ready = next(x for x in c.status()["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NotServing" and "v9" in ready["message"]


def test_ready_condition_names_what_serves() -> None:
    c = canary_at(10)
    ready = next(x for x in c.status()["conditions"] if x["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert ready["message"] == "revision 1 (movielens:v1+region-jp@v1) serves 90% of traffic, canary movielens:v2+region-jp@v1 10%"


def test_no_route_to_a_canary_that_is_not_ready_and_no_fast_ticks_while_waiting_for_it() -> None:
    c = canary_at(10)
    c.kserve_ready = False
    outcome = c.reconcile()
    assert c.traffic.state is not None and (c.traffic.state.canary_weight, c.traffic.state.canary_revision) == (0, None)
    assert outcome is not None and not outcome.busy, "waiting on an InferenceService is event-driven"
    assert c.phase()[2] == 10, "status keeps the step's weight; the step holds"
    c.kserve_ready = True
    c.reconcile()
    assert c.traffic.state.canary_weight == 10


def test_the_split_is_sampled_on_weight_steps_and_a_wrong_split_holds_the_step() -> None:
    c = canary_at(10)
    c.analysis.split = lambda ref, spec, action, now: SplitSample(900, 1000, action.since)  # type: ignore[method-assign]
    for _ in range(4):
        c.reconcile()
    assert c.phase() == ("Progressing", 0, 10) and "more than 3 sigma from 10%" in c.status()["message"]


def test_busy_while_steps_run_idle_once_promoted() -> None:
    c = canary_at(10)
    outcome = c.reconcile()
    assert outcome is not None and outcome.busy
    c.run_until(lambda c: c.phase()[0] == "Promoted")
    c.now += timedelta(minutes=1)
    assert not c.controller.reconcile(NS, NAME).busy


def test_set_traffic_in_the_engine_is_what_the_provider_gets() -> None:
    c = canary_at(50)
    assert c.traffic.history[-1] == SetTraffic(1, 2, 50, 0)


# ---------------------------------------------------------------- issue 26, finding 4: a traffic object that is not the Rollout's
FOREIGN = ("HTTPRoute team-a/recommender exists and is not this Rollout's (controller: HTTPRoute owner team-b/frontend); annotate it "
           "fmops.dev/adopt=recommender to hand it over, or name another object in spec.trafficRouting")


def test_a_foreign_traffic_object_blocks_a_new_rollout_with_a_condition_and_writes_nothing() -> None:
    c = Cluster()
    c.traffic.foreign = FOREIGN
    for _ in range(5):
        c.reconcile()
    s = c.status()
    refs = next(x for x in s["conditions"] if x["type"] == "ResolvedRefs")
    assert (refs["status"], refs["reason"]) == ("False", "RefNotPermitted") and "fmops.dev/adopt" in refs["message"]
    assert not [w for w in c.kube.writes if w.startswith(("apply", "traffic"))], c.kube.writes
    assert c.traffic.history == []


def test_a_foreign_traffic_object_keeps_the_stable_serving_and_starts_nothing() -> None:
    c = promoted_first(Cluster())
    c.traffic.foreign = FOREIGN  # someone else's object now sits where the route was named (spec edited to point at it)
    c.edit_spec(model=V2)
    for _ in range(5):
        c.reconcile()
    assert c.phase()[0] == "Promoted" and c.status()["revision"] == 1, c.status().get("message")
    refs = next(x for x in c.status()["conditions"] if x["type"] == "ResolvedRefs")
    assert refs["reason"] == "RefNotPermitted"
