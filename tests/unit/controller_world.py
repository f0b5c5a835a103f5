"""The real rollout Controller, driven against in-memory fakes of what it talks to.

`FakeKube` is the Kubernetes adapter (fmop.kube.Kube's methods) over a dict, with resourceVersions
and the faults a test asks for (status writes refused, conflicts); `KServe` marks InferenceServices
Ready the way its controller would; `FakeTraffic` is a traffic provider that remembers every write;
`FakeAnalysis` answers measurements (scripted) and the observed split (exactly what was routed).
Nothing of the controller's own logic is re-implemented here: `Cluster.reconcile` calls
`Controller.reconcile`, and a crash is the controller's own crash hook raising `Crashed`.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fmop.api.rollout import RolloutSpec, TrafficRouting
from fmop.kinds import FOUNDATION_MODEL, INFERENCE_SERVICE, ROLLOUT, TASK_ADAPTER, Kind
from fmop.kube import Conflict, KubeError
from fmop.rollout.controller import Controller, Outcome
from fmop.rollout.providers.base import RolloutRef
from fmop.rollout.providers.kube import ForeignObject
from fmop.rollout.types import Alert, Measure, Measurement, MeasurementPhase, ObservedTraffic, SampleSplit, SetTraffic, SplitSample

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NS, NAME = "team-a", "recommender"

ROLLOUT_SPEC: dict[str, Any] = {
    "model": {"foundationModel": {"name": "movielens", "version": "v1"}, "adapters": [{"name": "region-jp", "version": "v1"}]},
    "trafficRouting": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gateway"}]}},
    "strategy": {"steps": [{"setWeight": 10}, {"analysis": {"metrics": ["error-rate"]}}, {"setWeight": 50}, {"setWeight": 100}],
                 "keepWarm": "0s"},
    "analysis": {"prometheusAddress": "http://prometheus:9090",
                 "metrics": [{"name": "error-rate", "query": "sum(rate(errors[1m]))", "successCondition": "result < 0.01",
                              "interval": "30s", "count": 2, "failureLimit": 0, "inconclusiveLimit": 1}]},
    "rollback": {"alerts": {"matchers": [{"name": "severity", "value": "critical"}]}},
    "progressDeadline": "10m",
}


class Crashed(Exception):
    """The operator 'died' at a crash point (the test's stand-in for os._exit)."""


def _key(kind: Kind, namespace: str, name: str) -> tuple[str, str, str]:
    return kind.plural, namespace, name


@dataclass
class FakeKube:
    """fmop.kube.Kube over a dict: get/list/apply/delete/replace_status/event, with resourceVersions."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    writes: list[str] = field(default_factory=list)  # every write, in order: "status RolledBack", "apply isvc-2", ...
    deny_status: bool = False  # an admission policy refuses status writes
    conflicts: int = 0  # the next N status writes conflict (someone else wrote in between)
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def put(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[_key(kind, meta["namespace"], meta["name"])] = obj
        return obj

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get(_key(kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (plural, ns, _), o in sorted(self.objects.items())
                if plural == kind.plural and ns == namespace
                and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())]

    def apply(self, kind: Kind, obj: dict[str, Any], field_manager: str | None = None) -> dict[str, Any]:
        meta = obj["metadata"]
        old = self.objects.get(_key(kind, meta["namespace"], meta["name"]))
        merged = {**copy.deepcopy(obj), **({"status": old["status"]} if old and "status" in old else {})}
        self.writes.append(f"apply {kind.kind} {meta['name']}")
        return self.put(kind, merged)

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        self.writes.append(f"delete {kind.kind} {name}")
        return self.objects.pop(_key(kind, namespace, name), None) is not None

    def replace_status(self, kind: Kind, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        current = self.objects[_key(kind, meta["namespace"], meta["name"])]
        if self.deny_status:
            raise KubeError(f"update status of {kind.kind} {meta['namespace']}/{meta['name']}: 403 denied by admission policy", retry=False,
                            status=403)
        if self.conflicts > 0 or current["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            self.conflicts = max(0, self.conflicts - 1)
            current["metadata"]["resourceVersion"] = str(next(self._rv))  # the other writer's write
            raise Conflict(f"update status of {kind.kind}: the object has been modified", retry=True, status=409)
        self.writes.append(f"status {status.get('phase')}")
        updated = {**copy.deepcopy(current), "status": copy.deepcopy(status)}
        return self.put(kind, updated)

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str, component: str = "fm-operator") -> None:
        self.events.append((type_, reason, message))

    def pod_log_tail(self, *args: Any, **kwargs: Any) -> str:
        return ""


@dataclass
class FakeTraffic:
    """A traffic provider: one traffic object per Rollout; every write is remembered (to prove nothing is undone)."""

    kube: FakeKube
    state: ObservedTraffic | None = None
    history: list[SetTraffic] = field(default_factory=list)
    foreign: str = ""  # the traffic object belongs to someone else: the provider refuses it (providers.kube.ForeignObject)

    def observe(self, ref: RolloutRef, routing: TrafficRouting) -> ObservedTraffic | Literal["unknown"]:
        if self.foreign:
            raise ForeignObject(self.foreign)
        return self.state if self.state is not None else "unknown"

    def apply(self, ref: RolloutRef, routing: TrafficRouting, action: SetTraffic) -> bool:
        if self.foreign:
            raise ForeignObject(self.foreign)
        wanted = ObservedTraffic(action.canary_weight, action.mirror_percent, action.canary_revision)
        if wanted == self.state:
            return False
        self.state = wanted
        self.history.append(action)
        self.kube.writes.append(f"traffic {action.canary_weight}% to {action.canary_revision}")
        return True


@dataclass
class FakeAnalysis:
    """Prometheus: scripted measurement phases per metric (then Successful); the split is exactly what is routed."""

    traffic: FakeTraffic
    script: dict[str, list[MeasurementPhase]] = field(default_factory=dict)

    def measure(self, ref: RolloutRef, spec: RolloutSpec, action: Measure, now: datetime) -> tuple[Measurement, ...]:
        out = []
        for metric in action.metrics:
            queue = self.script.setdefault(metric, [])
            phase: MeasurementPhase = queue.pop(0) if queue else "Successful"
            value = {"Successful": 0.001, "Failed": 0.2}.get(phase)
            out.append(Measurement(metric, phase, now, value, "" if value is not None else "no data", address="http://prometheus:9090"))
        return tuple(out)

    def split(self, ref: RolloutRef, spec: RolloutSpec, action: SampleSplit, now: datetime) -> SplitSample:
        weight = self.traffic.state.canary_weight if self.traffic.state is not None else 0
        return SplitSample(10 * weight, 1000, action.since)


@dataclass
class Cluster:
    """The world one Rollout lives in, and the operator process reconciling it (replaced on a 'restart')."""

    kube: FakeKube = field(default_factory=FakeKube)
    now: datetime = T0
    crash_at: tuple[str, str] | None = None  # (point, phase): the operator dies there, once
    crashes: list[tuple[str, str]] = field(default_factory=list)
    kserve_ready: bool = True
    traffic: FakeTraffic = field(init=False)
    analysis: FakeAnalysis = field(init=False)
    controller: Controller = field(init=False)

    def __post_init__(self) -> None:
        self.traffic = FakeTraffic(self.kube)
        self.analysis = FakeAnalysis(self.traffic)
        self.restart()
        fm_versions = [{"version": v, "artifactUri": f"s3://models/movielens/{v}", "phase": "Succeeded"} for v in ("v1", "v2", "v3")]
        self.kube.put(FOUNDATION_MODEL, {"apiVersion": "fmops.dev/v1alpha1", "kind": "FoundationModel",
                                         "metadata": {"name": "movielens", "namespace": NS},
                                         "spec": {}, "status": {"latestVersion": "v3", "versions": fm_versions}})
        self.kube.put(TASK_ADAPTER, {"apiVersion": "fmops.dev/v1alpha1", "kind": "TaskAdapter",
                                     "metadata": {"name": "region-jp", "namespace": NS},
                                     "spec": {"foundationModel": {"name": "movielens"}},
                                     "status": {"versions": [{"version": "v1", "foundationModelVersion": v, "artifactUri": "s3://a"}
                                                             for v in ("v1", "v2", "v3")]}})
        self.kube.put(ROLLOUT, {"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": NAME, "namespace": NS},
                                "spec": copy.deepcopy(ROLLOUT_SPEC)})

    def restart(self) -> None:
        """A new operator process: nothing in memory survives, only what is in the cluster."""
        self.controller = Controller(self.kube, traffic_for=lambda routing: self.traffic, analysis=self.analysis,
                                     clock=lambda: self.now, crash=self._crash)

    def _crash(self, point: str, phase: str) -> None:
        if self.crash_at is not None and (point, phase) == self.crash_at:
            self.crash_at = None
            self.crashes.append((point, phase))
            raise Crashed(f"{point} ({phase})")

    # ------------------------------------------------------------ what happens in the world
    def reconcile(self, minutes: float = 0.5, alerts: tuple[Alert, ...] = ()) -> Outcome | None:
        """Time passes, KServe reconciles, the operator reconciles; a crash restarts it (None is returned)."""
        self.now += timedelta(minutes=minutes)
        self._kserve()
        try:
            return self.controller.reconcile(NS, NAME, alerts)
        except Crashed:
            self.restart()
            return None

    def _kserve(self) -> None:
        for (plural, _, _), obj in self.kube.objects.items():
            if plural == INFERENCE_SERVICE.plural:
                status = {"conditions": [{"type": "Ready", "status": "True" if self.kserve_ready else "False",
                                          **({} if self.kserve_ready else {"message": "predictor pods CrashLoopBackOff"})}]}
                if obj.get("status") != status:  # a write: a new resourceVersion, as the API server gives it
                    obj["status"] = status
                    obj["metadata"]["resourceVersion"] = str(next(self.kube._rv))

    def edit_spec(self, **changes: Any) -> None:
        obj = self.kube.objects[_key(ROLLOUT, NS, NAME)]
        for path, value in changes.items():
            node = obj["spec"]
            *parents, leaf = path.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        obj["metadata"]["generation"] += 1
        obj["metadata"]["resourceVersion"] = str(next(self.kube._rv))

    def status(self) -> dict[str, Any]:
        return dict(self.kube.objects[_key(ROLLOUT, NS, NAME)].get("status") or {})

    def phase(self) -> tuple[str, int | None, int]:
        s = self.status()
        return s.get("phase", ""), s.get("currentStepIndex"), s.get("canaryWeight", 0)

    def run_until(self, done: Any, limit: int = 80, minutes: float = 0.5) -> None:
        for _ in range(limit):
            self.reconcile(minutes)
            if done(self):
                return
        raise AssertionError(f"not reached in {limit} reconciles: {self.status().get('phase')}: {self.status().get('message')}")


def alert(name: str, fingerprint: str, starts_at: datetime) -> Alert:
    return Alert(name, fingerprint, starts_at, summary=f"{name} on the recommender", labels=(("severity", "critical"),))


def promoted_first(cluster: Cluster) -> Cluster:
    """Revision 1 (v1) serves all traffic."""
    cluster.run_until(lambda c: c.phase()[0] == "Promoted")
    return cluster
