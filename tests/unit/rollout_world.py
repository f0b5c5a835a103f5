"""A small fake world around the rollout engine, for tick-by-tick tests.

World plays the kopf handler and the real parts: it builds Observations, calls decide, stores the
status the way the API server would (a JSON round trip) and carries out the actions: InferenceServices
appear (Ready unless told otherwise) and are deleted, the traffic provider applies weights, Prometheus
answers Measure actions with the next scripted result. Every tick also replays the same observations
against the stored status, as a restarted operator would, and checks that nothing moves twice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fmop.api.rollout import RolloutSpec, RolloutStatus
from fmop.rollout import (
    Action,
    Alert,
    Decision,
    EmitEvent,
    EnsureInferenceService,
    InferenceServiceState,
    Measure,
    Measurement,
    Observations,
    ObservedTraffic,
    RecordHistory,
    RemoveInferenceService,
    SetTraffic,
    SplitSample,
    decide,
)
from fmop.rollout.types import SampleSplit, SplitUnknown
from fmop.rollout.types import MeasurementPhase

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PROMETHEUS = "http://prometheus.monitoring:9090"

BASE: dict[str, Any] = {
    "model": {"foundationModel": {"name": "movielens", "version": "v1"}, "adapters": [{"name": "region-jp", "version": "v1"}]},
    "trafficRouting": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gateway"}]}},
    "strategy": {"steps": [{"setWeight": 5}, {"analysis": {"metrics": ["error-rate"]}}, {"setWeight": 25}, {"setWeight": 100}],
                 "keepWarm": "5m"},
    "analysis": {"metrics": [{"name": "error-rate", "query": "sum(rate(errors[1m]))", "successCondition": "result < 0.01",
                              "interval": "30s", "count": 2, "failureLimit": 0, "inconclusiveLimit": 1}]},
    "rollback": {"alerts": {"matchers": [{"name": "severity", "value": "critical"}]}},
    "progressDeadline": "10m",
}


def make_spec(**changes: Any) -> RolloutSpec:
    """BASE with top-level sections replaced (strategy=..., analysis=...) or dotted paths set ('strategy.shadow')."""
    doc = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return RolloutSpec.model_validate(doc)


def with_model(spec: RolloutSpec, version: str, adapter: str = "v1") -> RolloutSpec:
    doc = spec.model_dump(mode="json", exclude_none=True)
    doc["model"] = {"foundationModel": {"name": "movielens", "version": version}, "adapters": [{"name": "region-jp", "version": adapter}]}
    return RolloutSpec.model_validate(doc)


def edited(spec: RolloutSpec, **changes: Any) -> RolloutSpec:
    return spec.model_copy(update=changes)


@dataclass
class World:
    spec: RolloutSpec
    now: datetime = T0
    status: RolloutStatus = field(default_factory=RolloutStatus)
    isvcs: dict[int, InferenceServiceState] = field(default_factory=dict)
    new_isvcs_ready: bool = True
    traffic: ObservedTraffic | Literal["unknown"] = "unknown"
    traffic_mode: Literal["applies", "stuck", "unknown"] = "applies"
    script: dict[str, list[MeasurementPhase]] = field(default_factory=dict)  # per metric: the next results, then Successful
    measurements: dict[str, Measurement] = field(default_factory=dict)  # the newest per metric, as the handler keeps them
    alerts: list[Alert] = field(default_factory=list)
    split: SplitSample | SplitUnknown | None = None
    split_fixed: bool = False  # a scenario set the split: SampleSplit does not replace it with what the provider routed
    promote: str | None = None
    retry: str | None = None
    abort: str | None = None
    hold: str | None = None  # the controller's reference check: why spec.model cannot be served yet
    events: list[EmitEvent] = field(default_factory=list)
    records: list[RecordHistory] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    measured: list[datetime] = field(default_factory=list)  # when Measure actions came
    last: Decision | None = None

    def observations(self) -> Observations:
        return Observations(
            inference_services=tuple(self.isvcs[r] for r in sorted(self.isvcs)),
            measurements=tuple(self.measurements[m] for m in sorted(self.measurements)),
            alerts=tuple(self.alerts),
            traffic=self.traffic,
            split=self.split,
            promote_request=self.promote,
            retry_request=self.retry,
            abort_request=self.abort,
            generation=1,
            hold=self.hold,
        )

    def tick(self, minutes: float = 1.0, *, act: bool = True) -> Decision:
        """One reconcile. act=False: the operator died after writing status, before carrying out the actions."""
        self.now += timedelta(minutes=minutes)
        obs = self.observations()
        decision = decide(self.spec, self.status, obs, self.now)
        self.status = RolloutStatus.model_validate(decision.status.model_dump(mode="json"))  # stored as the API server stores it
        replay = decide(self.spec, self.status, obs, self.now)  # a restart right after the status patch
        assert replay.status == self.status, "replaying the same observations moved the Rollout again"
        assert not [a for a in replay.actions if isinstance(a, (EmitEvent, RecordHistory))], "replay repeated Events or history"
        if act:
            self.apply(decision.actions)
        self.last = decision
        return decision

    def apply(self, actions: tuple[Action, ...]) -> None:
        for action in actions:
            if isinstance(action, EnsureInferenceService) and action.revision not in self.isvcs:
                self.isvcs[action.revision] = InferenceServiceState(action.revision, self.new_isvcs_ready, "" if self.new_isvcs_ready else "predictor pods CrashLoopBackOff")
            elif isinstance(action, SetTraffic):
                self._route(action)
            elif isinstance(action, Measure):
                self.measured.append(self.now)
                for metric in action.metrics:
                    self.measurements[metric] = self._measure(metric)
            elif isinstance(action, SampleSplit) and not self.split_fixed:  # the backends counted exactly what was routed
                weight = self.traffic.canary_weight if self.traffic != "unknown" else self.status.canaryWeight
                self.split = SplitSample(10 * weight, 1000, action.since)
            elif isinstance(action, RemoveInferenceService):
                self.isvcs.pop(action.revision, None)
                self.removed.append(action.revision)
            elif isinstance(action, EmitEvent):
                self.events.append(action)
            elif isinstance(action, RecordHistory):
                self.records.append(action)

    def _route(self, action: SetTraffic) -> None:
        if self.traffic_mode == "applies":
            self.traffic = ObservedTraffic(action.canary_weight, action.mirror_percent, action.canary_revision)
        elif self.traffic_mode == "unknown":
            self.traffic = "unknown"

    def _measure(self, metric: str) -> Measurement:
        queue = self.script.setdefault(metric, [])
        phase: MeasurementPhase = queue.pop(0) if queue else "Successful"
        value = {"Successful": 0.001, "Failed": 0.2}.get(phase)
        message = {"Error": "connection refused", "Inconclusive": "empty result"}.get(phase, "")
        return Measurement(metric, phase, self.now + timedelta(seconds=1), value, message, query="sum(rate(errors[1m]))", address=PROMETHEUS)

    # -------------------------------------------------- things a scenario does to the world
    def set_ready(self, ready: bool) -> None:
        self.new_isvcs_ready = ready
        self.isvcs = {r: replace(i, ready=ready, message="" if ready else "predictor pods CrashLoopBackOff") for r, i in self.isvcs.items()}

    def fire(self, name: str, fingerprint: str, starts_at: datetime, labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.alerts.append(Alert(name, fingerprint, starts_at, summary=f"{name} on recommender", labels=labels))

    def seen(self) -> tuple[str, int | None, int]:
        return self.status.phase, self.status.currentStepIndex, self.status.canaryWeight

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def stable_world(spec: RolloutSpec, **kwargs: Any) -> World:
    """A Rollout that has served its first revision (spec.model as given) and promoted it."""
    world = World(spec, **kwargs)
    world.tick()
    world.tick()
    assert world.status.phase == "Promoted", world.status.message
    return world


Do = Callable[[World], None]
