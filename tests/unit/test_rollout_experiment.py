"""The experiment step (strategy.steps[].experiment): a sticky split of users between stable and canary until an
always-valid sequential test decides. The engine tick by tick (tests/unit/rollout_world.py, one tick a minute), the
API's refusals, and the real controller against its in-memory fakes (tests/unit/controller_world.py).

Every scenario starts from a stable revision 1 (movielens v1); `canary()` starts revision 2 and brings it to the
experiment step with its split in place, so the first look comes on the next tick.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from fmop.api.rollout import ExperimentStep, Rollout, RolloutSpec, RolloutStatus
from fmop.rollout import Action, Observations, ObservedTraffic, SetTraffic, decide, sequential
from fmop.rollout.providers.base import RolloutRef
from fmop.rollout.sequential import Arm
from fmop.rollout.types import EmitEvent, ExperimentCounts, ExperimentUnknown, RecordHistory, SampleExperiment
from tests.unit import controller_world
from tests.unit.rollout_world import BASE, World, make_spec, stable_world, with_model
from tests.unit.test_analysis import Answers

# (stable exposures, stable successes, canary exposures, canary successes), or a str: the counts cannot be read
Answer = tuple[int, int, int, int] | str
BETTER: Answer = (2000, 200, 2000, 300)
WORSE: Answer = (2000, 300, 2000, 200)
EVEN: Answer = (150, 15, 150, 15)  # enough for a verdict, no difference: no decision
SKEWED: Answer = (3000, 300, 1000, 100)  # 25% on the canary where 50% was configured
UNREADABLE: Answer = "Prometheus at http://prometheus.monitoring:9090 is unreachable: connection refused"


def experiment_spec(steps: list[dict[str, Any]] | None = None, **experiment: Any) -> RolloutSpec:
    x = {"candidatePercent": 50, "interval": "30s", "maxDuration": "1h", **experiment}
    return make_spec(strategy={"steps": steps or [{"experiment": x}, {"setWeight": 100}], "keepWarm": "5m"})


@dataclass
class ExperimentWorld(World):
    """World whose traffic provider routes user buckets (and says so), and whose Prometheus answers SampleExperiment."""

    answer: Answer = (0, 0, 0, 0)
    counts_asked: list[SampleExperiment] = field(default_factory=list)
    counts: ExperimentCounts | ExperimentUnknown | None = None

    def observations(self) -> Observations:
        return replace(super().observations(), experiment=self.counts)

    def apply(self, actions: tuple[Action, ...]) -> None:
        for action in actions:
            if isinstance(action, SampleExperiment):
                self.counts_asked.append(action)
                if isinstance(self.answer, str):
                    self.counts = ExperimentUnknown(self.answer, self.now, action.since)
                else:
                    a, x, b, y = self.answer
                    self.counts = ExperimentCounts(Arm(a, x), Arm(b, y), action.since, self.now)
            else:
                super().apply((action,))

    def _route(self, action: SetTraffic) -> None:
        if self.traffic_mode == "applies":
            self.traffic = ObservedTraffic(action.canary_weight, action.mirror_percent, action.canary_revision, action.buckets)
        else:
            super()._route(action)


def world(spec: RolloutSpec) -> ExperimentWorld:
    w = stable_world(spec)
    assert isinstance(w, World)
    return ExperimentWorld(**{f: getattr(w, f) for f in World.__dataclass_fields__})


def canary(w: ExperimentWorld) -> None:
    """Revision 2 (v2) Ready, at the experiment step, its split in place and the experiment started."""
    w.spec = with_model(w.spec, "v2")
    for _ in range(4):
        w.tick()
        if w.status.experiment is not None and w.status.experiment.startedAt is not None:
            break
    assert w.status.experiment is not None and w.status.experiment.startedAt is not None, w.status.message
    assert w.seen() == ("Progressing", 0, 0), w.status.message


def condition(w: World, type_: str) -> tuple[str, str, str]:
    c = next(c for c in w.status.conditions if c.type == type_)
    return c.status, c.reason, c.message


# ---------------------------------------------------------------- routing and looks
def test_users_go_to_the_canary_by_bucket_only_once_it_is_ready_and_the_look_waits_for_the_split() -> None:
    w = world(experiment_spec(candidatePercent=20))
    w.set_ready(False)
    w.spec = with_model(w.spec, "v2")
    routes: list[SetTraffic] = []
    for _ in range(3):
        routes += [a for a in w.tick().actions if isinstance(a, SetTraffic)]
    assert routes and all(r.canary_revision is None and r.buckets is None for r in routes), routes
    assert w.status.phase == "Pending" and w.status.currentStepIndex is None  # the canary is not Ready: no step yet
    w.set_ready(True)
    w.tick()  # -> the experiment step
    assert w.seen() == ("Progressing", 0, 0)
    assert [a for a in w.last.actions if isinstance(a, SetTraffic)] == [SetTraffic(1, 2, 0, 0, (0, 19))]
    assert w.status.experiment is not None and w.status.experiment.startedAt is None  # not seen in place yet
    assert not w.counts_asked
    w.tick()  # the split is seen in place: counting starts now; the first look comes one interval later
    assert w.status.experiment.startedAt == "2026-01-01T00:07:00Z"
    assert not w.counts_asked
    w.tick()
    assert [(c.stable_revision, c.canary_revision, c.success, c.since.isoformat()) for c in w.counts_asked] == [
        (1, 2, "played", "2026-01-01T00:07:00+00:00")]
    w.set_ready(False)  # the canary falls over during the experiment: no route to it, no look, the step holds
    w.tick()
    assert [a for a in w.last.actions if isinstance(a, SetTraffic)] == [SetTraffic(1, None, 0, 0)]
    assert condition(w, "Progressing")[1] == "CanaryNotReady" and len(w.counts_asked) == 1


def test_a_traffic_object_without_the_bucket_route_holds_the_step() -> None:
    w = world(experiment_spec())
    w.traffic_mode = "stuck"
    w.spec = with_model(w.spec, "v2")
    for _ in range(3):
        w.tick()
    assert w.status.currentStepIndex == 0 and w.status.experiment is not None and w.status.experiment.startedAt is None
    status, reason, message = condition(w, "Progressing")
    assert reason == "TrafficNotApplied" and "user buckets 0..49 (header x-fmops-bucket)" in message, message
    assert not w.counts_asked


def test_it_looks_every_interval_and_keeps_going_while_undecided() -> None:
    w = world(experiment_spec(interval="2m"))
    canary(w)
    w.answer = (40, 4, 40, 5)
    for _ in range(6):
        w.tick()
    looks = [c for c in w.counts_asked]
    assert len(looks) == 3 and w.status.experiment is not None and w.status.experiment.looks == 2  # the third is read on the next tick
    assert [c.since for c in looks] == [looks[0].since] * 3  # cumulative: always since the start
    assert w.status.experiment.outcome == "continue" and "waiting for 100 exposures per arm" in w.status.experiment.reason
    assert w.seen() == ("Progressing", 0, 0) and condition(w, "Progressing")[1] == "Experimenting"
    assert w.last is not None and w.last.busy


# ---------------------------------------------------------------- verdicts
def test_better_goes_on_to_the_next_step_with_an_event_naming_the_numbers() -> None:
    w = world(experiment_spec())
    canary(w)
    w.answer = BETTER
    w.tick()  # counts asked
    w.tick()  # recorded: better, the step ends
    e = w.status.experiment
    assert e is not None and (e.outcome, e.action, e.stepIndex, e.revision) == ("better", "next-step", 0, 2)
    assert e.control is not None and e.candidate is not None
    assert (e.control.exposures, e.control.successes, e.candidate.exposures, e.candidate.successes) == (2000, 200, 2000, 300)
    assert e.confidenceSequence is not None and 0 < e.confidenceSequence.lower < e.difference < e.confidenceSequence.upper
    assert e.likelihoodRatio is not None and e.threshold == 20 and e.likelihoodRatio >= 20 and e.sampleRatio is not None
    assert w.seen() == ("Progressing", 1, 100)
    better = [ev for ev in w.events if ev.reason == "ExperimentBetter"]
    assert len(better) == 1 and "rate 0.1500 (candidate, n=2000) vs 0.1000 (stable, n=2000)" in better[0].message
    for _ in range(3):
        w.tick()
    assert w.status.phase == "Promoted" and [(h.revision, h.outcome) for h in w.status.history] == [(1, "Promoted"), (2, "Promoted")]
    assert w.reasons().count("ExperimentBetter") == 1
    assert w.status.experiment is not None and w.status.experiment.outcome == "better"  # kept: what the step decided


def test_worse_rolls_back_with_the_numbers_in_the_reason_and_one_event() -> None:
    w = world(experiment_spec())
    canary(w)
    w.answer = WORSE
    w.tick()
    w.tick()
    assert w.status.phase == "RolledBack" and w.status.canaryWeight == 0
    assert w.status.rollbackReason is not None and w.status.rollbackReason.startswith(
        "experiment at spec.strategy.steps[0] (experiment 50% of users): candidate worse: rate 0.1000 (candidate, n=2000) vs 0.1500")
    assert w.reasons().count("RolledBack") == 1 and "ExperimentWorse" not in w.reasons()
    assert w.status.experiment is not None and (w.status.experiment.outcome, w.status.experiment.action) == ("worse", "rollback")
    assert [a for a in w.last.actions if isinstance(a, SetTraffic)][0] == SetTraffic(1, None, 0, 0)  # traffic first
    assert [(h.revision, h.outcome) for h in w.status.history] == [(1, "Promoted"), (2, "RolledBack")]


def test_worse_pauses_when_automatic_rollback_is_off() -> None:
    spec = experiment_spec()
    w = world(spec.model_copy(update={"rollback": spec.rollback.model_copy(update={"onAnalysisFailure": False})}))
    canary(w)
    w.answer = WORSE
    w.tick()
    w.tick()
    assert w.status.phase == "Paused" and condition(w, "Progressing")[1] == "ExperimentWorse"
    assert w.reasons().count("ExperimentWorse") == 1


@pytest.mark.parametrize(("on", "phase", "step", "reason"), [
    pytest.param("promote", "Progressing", 1, "ExperimentNoDecision", id="promote-goes-on"),
    pytest.param("rollback", "RolledBack", 0, "RolledBack", id="rollback"),
    pytest.param("pause", "Paused", 0, "ExperimentNoDecision", id="pause"),
])
def test_no_decision_at_max_duration_does_what_on_no_decision_says(on: str, phase: str, step: int, reason: str) -> None:
    w = world(experiment_spec(maxDuration="3m", onNoDecision=on))
    canary(w)
    w.answer = EVEN
    for _ in range(4):
        w.tick()
        if w.status.experiment is not None and w.status.experiment.outcome != "continue" and w.status.experiment.looks:
            break
    e = w.status.experiment
    assert e is not None and e.outcome == "no-decision" and e.reason.startswith("no decision after"), e
    assert (w.status.phase, w.status.currentStepIndex) == (phase, step), w.status.message
    assert w.reasons().count(reason) == 1, w.reasons()
    if on == "pause":
        assert condition(w, "Progressing")[:2] == ("False", "ExperimentNoDecision")
        w.tick(); w.tick()
        assert w.status.phase == "Paused" and w.status.heldSince is None  # a deliberate pause: no deadline
        w.promote = "go"
        w.tick()
        assert w.seen() == ("Progressing", 1, 100) and "PromoteIgnored" not in w.reasons()


def test_no_decision_at_max_exposures() -> None:
    w = world(experiment_spec(maxExposures=300, onNoDecision="rollback"))
    canary(w)
    w.answer = EVEN
    w.tick()
    w.tick()
    assert w.status.phase == "RolledBack" and "300 exposures (max_exposures 300)" in (w.status.rollbackReason or "")


def test_a_sample_ratio_mismatch_pauses_and_decides_nothing() -> None:
    w = world(experiment_spec())
    canary(w)
    w.answer = SKEWED
    w.tick()
    w.tick()
    assert w.status.phase == "Paused" and w.status.currentStepIndex == 0
    status, reason, message = condition(w, "Progressing")
    assert (status, reason) == ("False", "SampleRatioMismatch")
    assert "the candidate has 1000 of 4000 exposures (25.00%), configured 50.00%" in message, message
    assert [(h.revision, h.outcome) for h in w.status.history] == [(1, "Promoted")]
    assert w.reasons().count("SampleRatioMismatch") == 1
    asked = len(w.counts_asked)
    for _ in range(3):
        w.tick()
    assert len(w.counts_asked) == asked and w.status.phase == "Paused"  # no more looks: the split must be fixed first
    w.abort = "stop"
    w.tick()
    assert w.status.phase == "RolledBack"


def test_unreadable_counts_pause_and_the_progress_deadline_fails_the_revision() -> None:
    w = world(experiment_spec())
    canary(w)
    w.answer = UNREADABLE
    w.tick()
    w.tick()
    assert w.status.phase == "Paused" and condition(w, "Progressing")[1] == "ExperimentCountsUnknown"
    assert w.status.experiment is not None and "connection refused" in (w.status.experiment.countsError or "")
    assert w.status.heldSince is not None
    w.answer = BETTER  # it answers again: the next look decides
    w.tick()
    w.tick()
    assert w.seen() == ("Progressing", 1, 100) and w.status.experiment.countsError is None
    w2 = world(experiment_spec())
    canary(w2)
    w2.answer = UNREADABLE
    for _ in range(14):  # spec.progressDeadline 10m
        w2.tick()
    assert w2.status.phase == "Failed" and "no progress for spec.progressDeadline 10m" in (w2.status.rollbackReason or "")


# ---------------------------------------------------------------- restarts and resets
def test_a_crash_after_the_status_write_neither_repeats_the_events_nor_decides_again() -> None:
    w = world(experiment_spec(steps=[{"experiment": {"interval": "30s"}}, {"pause": {"untilPromoted": True}}, {"setWeight": 100}]))
    canary(w)
    w.answer = BETTER
    w.tick()
    obs = w.observations()
    d = w.tick(act=False)  # decided (better, next step) and written; died before the actions and Events
    assert [e.reason for e in d.events] == ["ExperimentBetter", "StepStarted"]
    again = decide(w.spec, RolloutStatus.model_validate(w.status.model_dump(mode="json")), obs, w.now)
    assert not [a for a in again.actions if isinstance(a, EmitEvent | RecordHistory)] and again.status == w.status
    w.tick()
    w.tick()
    assert w.seen() == ("Paused", 1, 0) and w.status.experiment is not None and w.status.experiment.looks == 1
    assert "ExperimentBetter" not in w.reasons()  # lost with the crash, never posted twice


def test_a_new_revision_resets_the_experiment() -> None:
    w = world(experiment_spec())
    canary(w)
    w.answer = (40, 4, 40, 4)
    w.tick()
    w.tick()
    assert w.status.experiment is not None and w.status.experiment.looks == 1
    w.spec = with_model(w.spec, "v3")
    w.tick()
    assert w.status.revision == 3 and w.status.experiment is None
    for _ in range(3):
        w.tick()
    e = w.status.experiment
    assert e is not None and (e.revision, e.looks, e.outcome) == (3, 0, "pending")


def test_the_status_is_json_safe_and_within_the_schema() -> None:
    w = world(experiment_spec())
    canary(w)
    w.answer = (10**9, 10**9, 10**9, 0)  # statistics far past a float's range
    w.tick()
    w.tick()
    doc = w.status.model_dump(mode="json")
    assert RolloutStatus.model_validate(doc) == w.status
    import json
    json.dumps(doc, allow_nan=False)


# ---------------------------------------------------------------- the API
def _rollout(routing: dict[str, Any], step: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["trafficRouting"] = routing
    spec["strategy"]["steps"] = [step or {"experiment": {"candidatePercent": 10}}, {"setWeight": 100}]
    return {"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "r", "namespace": "ns"}, "spec": spec}


KSERVE = {"provider": "kserve"}
TRAEFIK = {"provider": "traefik", "traefik": {}}
TRAEFIK_ROUTE = {"provider": "traefik", "traefik": {"ingressRoute": {"match": "PathPrefix(`/`)"}}}
ISTIO = {"provider": "istio", "istio": {"hosts": ["reco"]}}


@pytest.mark.parametrize("routing", [BASE["trafficRouting"], ISTIO, TRAEFIK_ROUTE], ids=["gatewayAPI", "istio", "traefik-ingressRoute"])
def test_providers_that_route_by_header_take_an_experiment(routing: dict[str, Any]) -> None:
    x = Rollout.model_validate(_rollout(routing)).spec.strategy.steps[0].experiment
    assert x is not None and (x.candidatePercent, x.success, x.onNoDecision, x.interval, x.maxDuration) == (10, "played", "pause", "30s", "1h")


@pytest.mark.parametrize(("routing", "says"), [
    pytest.param(KSERVE, "strategy.steps[].experiment needs routing by header, which trafficRouting.provider kserve cannot do", id="kserve"),
    pytest.param(TRAEFIK, "strategy.steps[].experiment with trafficRouting.provider traefik needs trafficRouting.traefik.ingressRoute",
                 id="traefik-without-ingressRoute"),
])
def test_providers_that_cannot_route_by_header_are_refused_naming_the_field_and_the_fix(routing: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as err:
        Rollout.model_validate(_rollout(routing))
    assert says in str(err.value)


@pytest.mark.parametrize(("step", "says"), [
    pytest.param({"experiment": {}, "setWeight": 50}, "a step with experiment sets nothing else", id="with-setWeight"),
    pytest.param({"experiment": {"candidatePercent": 100}}, "candidatePercent", id="candidate-100"),
    pytest.param({"experiment": {"candidatePercent": 0}}, "candidatePercent", id="candidate-0"),
    pytest.param({"experiment": {"alpha": 0.5}}, "alpha", id="alpha-too-large"),
    pytest.param({"experiment": {"minimumEffect": 0}}, "minimumEffect", id="no-effect"),
    pytest.param({"experiment": {"success": "liked"}}, "success", id="unknown-outcome"),
    pytest.param({"experiment": {"onNoDecision": "wait"}}, "onNoDecision", id="unknown-action"),
    pytest.param({"experiment": {"interval": "often"}}, "interval", id="bad-interval"),
    pytest.param({"experiment": {"maxExposures": 150}}, "must be at least twice experiment.minExposures 100", id="max-below-min"),
])
def test_bad_experiment_steps_are_refused(step: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as err:
        Rollout.model_validate(_rollout(BASE["trafficRouting"], step))
    assert says in str(err.value)


def test_the_crd_carries_the_same_rules_and_defaults() -> None:
    from fmop.api.rollout import RolloutSpec as Spec

    rules = Spec.model_json_schema()["x-kubernetes-validations"]
    messages = [r["message"] for r in rules]
    assert any("provider kserve cannot do" in m for m in messages) and any("needs trafficRouting.traefik.ingressRoute" in m for m in messages)
    assert ExperimentStep().minExposures == sequential.DEFAULT_MIN_EXPOSURES


def test_a_spec_the_operator_cannot_route_is_failed_by_the_controller() -> None:
    """Where admission did not refuse it (CRDs older than the operator), the controller does: Accepted=False InvalidSpec."""
    c = controller_world.Cluster()
    c.edit_spec(trafficRouting={"provider": "kserve"}, strategy={"steps": [{"experiment": {}}, {"setWeight": 100}]})
    c.reconcile()
    accepted = next(x for x in c.status()["conditions"] if x["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert "provider kserve cannot do" in accepted["message"]


# ---------------------------------------------------------------- the real controller
@dataclass
class BucketTraffic(controller_world.FakeTraffic):
    def apply(self, ref: RolloutRef, routing: Any, action: SetTraffic) -> bool:
        wanted = ObservedTraffic(action.canary_weight, action.mirror_percent, action.canary_revision, action.buckets)
        if wanted == self.state:
            return False
        self.state = wanted
        self.history.append(action)
        return True


@dataclass
class CountingAnalysis(controller_world.FakeAnalysis):
    answer: Callable[[SampleExperiment, datetime], ExperimentCounts | ExperimentUnknown] | None = None
    asked: list[SampleExperiment] = field(default_factory=list)

    def experiment(self, ref: RolloutRef, spec: RolloutSpec, action: SampleExperiment, now: datetime) -> ExperimentCounts | ExperimentUnknown:
        self.asked.append(action)
        assert self.answer is not None
        return self.answer(action, now)


def test_the_controller_reads_the_counts_in_the_same_pass_and_promotes_a_better_canary() -> None:
    c = controller_world.Cluster()
    c.traffic = BucketTraffic(c.kube)
    c.analysis = CountingAnalysis(c.traffic, answer=lambda a, now: ExperimentCounts(Arm(2800, 280), Arm(1200, 180), a.since, now))
    c.restart()
    c.edit_spec(strategy={"steps": [{"experiment": {"candidatePercent": 30}}, {"setWeight": 100}], "keepWarm": "0s"})
    controller_world.promoted_first(c)
    c.edit_spec(model={"foundationModel": {"name": "movielens", "version": "v2"}, "adapters": [{"name": "region-jp", "version": "v1"}]})
    c.run_until(lambda c: c.status().get("experiment", {}).get("outcome") == "better")
    assert isinstance(c.analysis, CountingAnalysis) and len(c.analysis.asked) == 1
    assert any(a.buckets == (0, 29) and a.canary_weight == 0 for a in c.traffic.history)
    e = c.status()["experiment"]
    assert (e["control"]["exposures"], e["candidate"]["successes"], e["action"]) == (2800, 180, "next-step")
    c.run_until(lambda c: c.phase()[0] == "Promoted")
    assert [h["outcome"] for h in c.status()["history"]] == ["Promoted", "Promoted"]
    assert [r for _, r, _ in c.kube.events].count("ExperimentBetter") == 1


# ---------------------------------------------------------------- the counts query, against an HTTP server answering like Prometheus
def prometheus_answering(pick: Callable[[str, float], float | None | bytes]) -> Answers:
    """A real HTTP server on 127.0.0.1 answering /api/v1/query with a number chosen by the query text and its evaluation
    time (None: empty vector; bytes: that body as it is)."""
    import json
    import urllib.parse

    def body(path: str) -> bytes:
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        value = pick(params["query"][0], float(params["time"][0]))
        return value if isinstance(value, bytes) else json.dumps({"status": "success", "data": {"resultType": "vector", "result": (
            [] if value is None else [{"metric": {}, "value": [0, str(value)]}])}}).encode()
    return Answers(body=body)


def queries(server: Answers) -> list[str]:
    import urllib.parse

    return [urllib.parse.parse_qs(urllib.parse.urlsplit(p).query)["query"][0] for p in server.paths]


def test_the_counts_are_the_counters_now_minus_at_the_start_per_arm_rounded_and_clamped() -> None:
    from datetime import UTC, timedelta

    from fmop.rollout import analysis

    since = datetime(2026, 1, 1, tzinfo=UTC)
    # (isvc, counter, at the start?) -> the counter's value; None: no such series then
    answers = {("recommender-r1", "requests", True): 200.0, ("recommender-r1", "requests", False): 1200.4,
               ("recommender-r1", "played", True): 10.0, ("recommender-r1", "played", False): 130.6,
               ("recommender-r2", "requests", True): None, ("recommender-r2", "requests", False): None,
               ("recommender-r2", "played", True): None, ("recommender-r2", "played", False): 3.0}

    def pick(q: str, at: float) -> float | None:
        isvc = "recommender-r1" if 'inferenceservice="recommender-r1"' in q else "recommender-r2"
        return answers[(isvc, "played" if 'outcome="played"' in q else "requests", at == since.timestamp())]

    prom = prometheus_answering(pick)
    try:
        got = analysis.experiment_counts(prom.url, "team-a", "recommender", 1, 2, "played", since, since + timedelta(seconds=90.2))
    finally:
        prom.close()
    # now minus at the start; no series is 0; successes <= exposures
    assert got == ExperimentCounts(Arm(1000, 121), Arm(0, 0), since, since + timedelta(seconds=90.2))
    assert queries(prom)[:4] == [
        'sum(fmrec_experiment_requests_total{namespace="team-a",inferenceservice="recommender-r1"})'] * 2 + [
        'sum(fmrec_experiment_outcomes_total{namespace="team-a",inferenceservice="recommender-r1",outcome="played"})'] * 2


def test_counts_that_cannot_be_read_are_unknown_naming_the_query_never_the_body() -> None:
    from datetime import UTC

    from fmop.rollout import analysis

    prom = prometheus_answering(lambda q, at: b"<html>secret internal page</html>")
    try:
        since = datetime(2026, 1, 1, tzinfo=UTC)
        got = analysis.experiment_counts(prom.url, "team-a", "recommender", 1, 2, "clicked", since, since)
    finally:
        prom.close()
    assert isinstance(got, ExperimentUnknown) and "fmrec_experiment_requests_total" in got.message and "not JSON" in got.message
    assert "secret" not in got.message
    refused = analysis.experiment_counts("http://elsewhere:9090", "team-a", "recommender", 1, 2, "played", since, since,
                                         allow=analysis.AllowList("http://prometheus:9090"))
    assert isinstance(refused, ExperimentUnknown) and "is not a Prometheus this operator may query" in refused.message


def test_kubectl_fmops_status_shows_the_experiment() -> None:
    from fmop.cli import render

    w = world(experiment_spec())
    canary(w)
    w.answer = BETTER
    w.tick()
    w.tick()
    body = {"metadata": {"name": "recommender", "namespace": "team-a"}, "spec": w.spec.model_dump(mode="json", exclude_none=True),
            "status": w.status.model_dump(mode="json", exclude_none=True)}
    text = render(body, [], w.now)
    assert "[x] 0   experiment 50% of users, success 'played', at most 1h" in text, text
    block = text.split("\nExperiment\n")[1].split("\n\n")[0]
    assert "50% of users on the canary" in block and "better -> next-step" in block
    assert "stable         2000 exposures        200 successes   rate 0.1000" in block, block
    assert "canary         2000 exposures        300 successes   rate 0.1500" in block, block
    assert "diff     +0.0500   95% interval [" in block and "lift +50.0% [" in block and "likelihood ratio" in block, block
