"""Argo CD testdata made by the operator's own code: objects exactly as the fm-operator leaves them.

Refresh after changing what the operator writes, or the expectations below:

    .venv/bin/python -m tests.unit.argocd_fixtures

The health checks and actions in charts/argocd/resource_customizations/fmops.dev/ are tested on
these objects (tests/unit/test_argocd_lua.py), and that test fails when the committed files differ
from what this module makes now: the testdata cannot drift from what the operator really writes.

How the objects are made: `Cluster` is the API server in memory (get, list, server-side apply,
status replace, Events: the calls fmop.kube.Kube makes for the handlers), and the other controllers
are played in a few lines each: Argo Workflows moves the training Workflows on as told, KServe marks
InferenceServices Ready (or not), the traffic provider routes as asked, Prometheus answers from a
script. The real reconcilers run on it: fmop.handlers.reconcile_foundation_model and
reconcile_task_adapter (the training planner underneath) and fmop.rollout.controller.Controller
(the rollout engine underneath), on a clock that moves one minute per tick. Every testdata object
is a snapshot of the stored object at one moment; `Fixtures.worlds` keeps the cluster of that
moment, so a test can carry out an action on it and reconcile again.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast
from unittest import mock

import kopf
import yaml

from fmop import handlers
from fmop.api.rollout import RolloutSpec, TrafficRouting
from fmop.config import Config
from fmop.kinds import FOUNDATION_MODEL, INFERENCE_SERVICE, ROLLOUT, TASK_ADAPTER, WORKFLOW, Kind
from fmop.kube import Conflict
from fmop.rollout import naming
from fmop.rollout.clock import ts
from fmop.rollout.controller import Controller
from fmop.rollout.providers.base import RolloutRef
from fmop.rollout.types import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    Measure,
    Measurement,
    MeasurementPhase,
    ObservedTraffic,
    SampleSplit,
    SetTraffic,
    SplitSample,
    SplitUnknown,
)
from fmop.training.planner import ARGO_WORKFLOW_LABEL
from fmop.training.render import LABEL_OWNER
from tests.conftest import REPO, load_example

Obj = dict[str, Any]
Health = Literal["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"]

CHARTS = REPO / "charts" / "argocd"
CUSTOMIZATIONS = CHARTS / "resource_customizations" / "fmops.dev"
ARGOCD_CM = CHARTS / "argocd-cm.yaml"
COMMAND = ".venv/bin/python -m tests.unit.argocd_fixtures"
HEADER = f"# Made by `{COMMAND}` from the fm-operator's own code; do not edit.\n"

NAMESPACE = "recsys"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
IMAGE = "registry.example.com/fmop/fmrec:1.0"
# The instant the Lua actions run at in the tests (their os.time/os.date): the request values they set.
ACTION_TIME = datetime(2026, 1, 2, 9, 30, tzinfo=UTC)
REQUEST = f"{ACTION_TIME:%Y%m%dT%H%M%SZ}-argocd"
REQUESTS = {"promote": PROMOTE_ANNOTATION, "abort": ABORT_ANNOTATION, "retry": RETRY_ANNOTATION}
ACTIONS = ("promote", "abort", "retry", "pause", "resume")
# The actions tested on a snapshot (the expected output is the snapshot with the request), then carried out on its cluster.
ACTION_CASES = (("promote", "suspended_waitingForPromotion"), ("abort", "suspended_waitingForPromotion"), ("abort", "progressing_shadowing"),
                ("retry", "degraded_rolledBack"), ("retry", "degraded_progressDeadlineExceeded"), ("pause", "progressing_canaryWeight"),
                ("pause", "progressing_waitingForVersion"), ("resume", "suspended_pausedBySpec"))
KINDS = {k.kind: k for k in (FOUNDATION_MODEL, TASK_ADAPTER, ROLLOUT)}
STORED = {k.kind: k for k in (FOUNDATION_MODEL, TASK_ADAPTER, ROLLOUT, WORKFLOW, INFERENCE_SERVICE)}


# ---------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    """The API server in memory, with Argo Workflows, KServe, the traffic provider and Prometheus played along."""

    now: datetime = T0
    trainer_image: str = IMAGE
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)  # (resource, name) -> the object as stored
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (object, reason, message)
    not_ready: dict[str, str] = field(default_factory=dict)  # Rollout -> why KServe does not make its new InferenceServices Ready
    prometheus: dict[str, list[MeasurementPhase]] = field(default_factory=dict)  # Rollout -> its next measurements, then Successful
    routes: dict[str, ObservedTraffic] = field(default_factory=dict)  # Rollout -> the traffic its route has
    logs: dict[str, str] = field(default_factory=dict)  # Workflow -> the log tail of its failed step
    serial: int = 0

    def fork(self) -> Cluster:
        return copy.deepcopy(self)

    # ------------------------------------------------ what people and Argo CD do
    def create(self, obj: Obj) -> None:
        kind = STORED[obj["kind"]]
        meta = obj["metadata"]
        assert (kind.resource, meta["name"]) not in self.objects, f"{kind.kind} {meta['name']} exists"
        self.serial += 1
        stored = copy.deepcopy({k: v for k, v in obj.items() if k != "status"})
        stored["metadata"] = {**copy.deepcopy(meta), "namespace": NAMESPACE, "uid": f"{kind.plural}-{meta['name']}-uid", "generation": 1,
                              "resourceVersion": str(self.serial), "creationTimestamp": ts(self.now)}
        self.objects[(kind.resource, meta["name"])] = stored

    def edit(self, kind: Kind, name: str, change: Callable[[Obj], None]) -> None:
        """Change an object as `kubectl apply` or an Argo CD sync would; a new spec is a new generation."""
        obj = self.objects[(kind.resource, name)]
        before = copy.deepcopy(obj.get("spec"))
        change(obj)
        if obj.get("spec") != before:
            obj["metadata"]["generation"] += 1
        self._written(obj)

    def annotate(self, kind: Kind, name: str, key: str, value: str) -> None:
        self.edit(kind, name, lambda o: o["metadata"].setdefault("annotations", {}).update({key: value}))

    def object(self, kind: Kind, name: str) -> Obj:
        return copy.deepcopy(self.objects[(kind.resource, name)])

    def status(self, kind: Kind, name: str) -> Obj:
        status: Obj = self.object(kind, name).get("status") or {}
        return status

    # ------------------------------------------------ the calls fmop.kube.Kube makes
    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        found = self.objects.get((kind.resource, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        return [copy.deepcopy(o) for (resource, _), o in sorted(self.objects.items())
                if resource == kind.resource and labels.items() <= (o["metadata"].get("labels") or {}).items()]

    def apply(self, kind: Kind, obj: Obj, field_manager: str | None = None) -> Obj:
        """Server-side apply of a complete object: create it, or take its spec, labels and annotations."""
        name = obj["metadata"]["name"]
        if (kind.resource, name) not in self.objects:
            self.create(obj)
        else:
            def take(found: Obj) -> None:
                found["spec"] = copy.deepcopy(obj.get("spec"))
                for key in ("labels", "annotations", "ownerReferences"):
                    if key in obj["metadata"]:
                        found["metadata"][key] = copy.deepcopy(obj["metadata"][key])
            self.edit(kind, name, take)
        stored = self.objects[(kind.resource, name)]
        if kind == INFERENCE_SERVICE:  # KServe: Ready, unless told that this Rollout's predictors do not come up
            why = self.not_ready.get(stored["metadata"]["labels"][naming.LABEL_ROLLOUT])
            ready = {"type": "Ready", "status": "True"} if why is None else {"type": "Ready", "status": "False", "reason": "PredictorNotReady", "message": why}
            stored["status"] = {"conditions": [{**ready, "lastTransitionTime": ts(self.now)}]}
        return copy.deepcopy(stored)

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        return self.objects.pop((kind.resource, name), None) is not None

    def replace_status(self, kind: Kind, body: Obj, status: Obj) -> Obj:
        stored = self.objects[(kind.resource, body["metadata"]["name"])]
        if stored["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
            raise Conflict(f"{kind.kind} {body['metadata']['name']} changed since it was read", retry=True, status=409)
        stored["status"] = copy.deepcopy(status)
        self._written(stored)
        return copy.deepcopy(stored)

    def event(self, body: Obj, type_: str, reason: str, message: str, component: str = "fm-operator") -> None:
        self.events.append((body["metadata"]["name"], reason, message))

    def pod_log_tail(self, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None,
                     container: str = "main", lines: int = 20) -> str:
        return self.logs.get(labels.get(ARGO_WORKFLOW_LABEL, ""), "")

    def _written(self, obj: Obj) -> None:
        self.serial += 1
        obj["metadata"]["resourceVersion"] = str(self.serial)

    # ------------------------------------------------ Argo Workflows
    def argo(self, owner: str, phase: Literal["Running", "Succeeded", "Failed"], *, ndcg: float = 0.1,
             failed_step: str = "", log: str = "") -> None:
        """Move the newest training Workflow of `owner` on, as the Argo controller would."""
        workflows = [o for (resource, _), o in self.objects.items()
                     if resource == WORKFLOW.resource and o["metadata"]["labels"].get(LABEL_OWNER) == owner]
        assert workflows, f"no Workflow of {owner}"
        wf = workflows[-1]
        name = wf["metadata"]["name"]
        metrics: Obj = {"HR@10": round(ndcg * 2, 4), "NDCG@10": ndcg}
        if wf["metadata"]["labels"].get("fmops.dev/kind") == TASK_ADAPTER.kind:
            metrics = {"fm_plus_adapter": metrics, "frozen_fm": {"NDCG@10": round(ndcg * 0.9, 4)}, "adapter_params": 8448, "users": 120}
        outputs = {"parameters": [{"name": "metrics", "value": json.dumps(metrics)},
                                  {"name": "data", "value": json.dumps({"dataFingerprint": "sha256:5e1f", "featureFingerprint": "sha256:a0c3"})}]}
        nodes: Obj = {name: {"id": name, "name": name, "type": "Steps", "phase": phase, **({"outputs": outputs} if phase == "Succeeded" else {})}}
        if phase == "Failed":
            pod = f"{name}-2718281828"
            nodes[pod] = {"id": pod, "name": f"{name}.{failed_step}", "displayName": failed_step, "type": "Pod", "phase": "Failed",
                          "message": "Error (exit code 1)", "finishedAt": ts(self.now)}
            self.logs[name] = log
        wf["status"] = {"phase": phase, "progress": {"Running": "1/4", "Succeeded": "4/4", "Failed": "2/4"}[phase],
                        "startedAt": wf["metadata"]["creationTimestamp"], "nodes": nodes}
        self._written(wf)

    # ------------------------------------------------ the operator
    def reconcile(self, kind: Kind, name: str) -> None:
        """One reconcile by the real handler of the kind, at self.now."""
        if kind == ROLLOUT:
            controller = Controller(self, traffic_for=lambda routing: _Traffic(self), analysis=_Prometheus(self),
                                    clock=lambda: self.now)
            controller.reconcile(NAMESPACE, name)
            return
        body = kopf.Body(cast(kopf.RawBody, self.object(kind, name)))
        patch = kopf.Patch()
        memo = kopf.Memo(kube=self, config=Config(trainer_image=self.trainer_image))
        handler = handlers.reconcile_foundation_model if kind == FOUNDATION_MODEL else handlers.reconcile_task_adapter
        with (mock.patch.object(handlers, "now_rfc3339", lambda: ts(self.now)),
              mock.patch.object(kopf, "info"), mock.patch.object(kopf, "warn")):  # kopf posts Events only inside a running operator
            handler(body=body, patch=patch, memo=memo, namespace=NAMESPACE, name=name, spec=body["spec"])  # as kopf calls it
        assert not patch, f"the handler wrote status through kopf's patch ({dict(patch)}), not through the API: apply it here"

    def tick(self, *objects: tuple[Kind, str], minutes: float = 1.0) -> None:
        self.now += timedelta(minutes=minutes)
        for kind, name in objects:
            self.reconcile(kind, name)

    def until(self, kind: Kind, name: str, reached: Callable[[Obj], bool], limit: int = 30) -> None:
        """Tick (a minute each) and reconcile `name` until its status has `reached`."""
        for _ in range(limit):
            self.tick((kind, name))
            if reached(self.status(kind, name)):
                return
        raise AssertionError(f"{kind.kind} {name} did not get there in {limit} ticks: {self.status(kind, name).get('message')}")


class _Traffic:
    """The traffic provider: the route has what was last applied ("unknown" before that)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def observe(self, ref: RolloutRef, routing: TrafficRouting) -> ObservedTraffic | Literal["unknown"]:
        return self.cluster.routes.get(ref.name, "unknown")

    def apply(self, ref: RolloutRef, routing: TrafficRouting, action: SetTraffic) -> bool:
        route = ObservedTraffic(action.canary_weight, action.mirror_percent, action.canary_revision)
        written, self.cluster.routes[ref.name] = self.cluster.routes.get(ref.name) != route, route
        return written


class _Prometheus:
    """Prometheus: each measurement is the next scripted result of the Rollout, then Successful; the
    requests counted at the backends split exactly as the route says."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def measure(self, ref: RolloutRef, spec: RolloutSpec, action: Measure, now: datetime) -> tuple[Measurement, ...]:
        queue = self.cluster.prometheus.setdefault(ref.name, [])
        out = []
        for metric in action.metrics:
            phase: MeasurementPhase = queue.pop(0) if queue else "Successful"
            value = {"Successful": 0.002, "Failed": 0.083}.get(phase)
            message = "the query returned no data" if phase == "Inconclusive" else ""
            out.append(Measurement(metric, phase, now, value, message, query=ERROR_RATE if phase == "Inconclusive" else "",
                                   address="http://prometheus-operated.monitoring.svc:9090"))
        return tuple(out)

    def split(self, ref: RolloutRef, spec: RolloutSpec, action: SampleSplit, now: datetime) -> SplitSample | SplitUnknown:
        route = self.cluster.routes.get(ref.name)
        if route is None:
            return SplitUnknown("no route yet")
        return SplitSample(route.canary_weight * 10, 1000, action.since)


# ---------------------------------------------------------------- the objects people write
ERROR_RATE = ('sum(rate(nv_inference_request_failure{namespace="{{namespace}}",inferenceservice="{{canary}}"}[1m]))'
              ' / clamp_min(sum(rate(nv_inference_request_success{namespace="{{namespace}}",inferenceservice="{{canary}}"}[1m])), 1e-9)')


def foundation_model() -> Obj:
    obj = load_example("foundationmodel.yaml")
    obj["metadata"] = {"name": "movielens"}
    return obj


def task_adapter(name: str = "west-coast", foundation_model: str = "movielens", pinned: str | None = None) -> Obj:
    obj = load_example("taskadapter.yaml")
    obj["metadata"] = {"name": name}
    obj["spec"]["foundationModel"]["name"] = foundation_model
    if pinned is not None:
        obj["spec"]["foundationModel"].update(versionPolicy="Pinned", version=pinned)
    return obj


def rollout(version: str = "v1", adapter: str = "west-coast") -> Obj:
    return {
        "apiVersion": "fmops.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "recommender"},
        "spec": {
            "model": {"foundationModel": {"name": "movielens", "version": version}, "adapters": [{"name": adapter}]},
            "serving": {"minReplicas": 1, "maxReplicas": 2},
            "trafficRouting": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "inference-gateway"}]}},
            "strategy": {"shadow": {"mirrorPercent": 100, "duration": "2m", "analysis": ["error-rate"]},
                         "steps": [{"setWeight": 10}, {"analysis": {"metrics": ["error-rate"]}}, {"pause": {"untilPromoted": True}},
                                   {"setWeight": 100}],
                         "keepWarm": "10m"},
            "analysis": {"metrics": [{"name": "error-rate", "query": ERROR_RATE, "successCondition": "result < 0.01",
                                      "interval": "30s", "count": 2, "failureLimit": 0, "inconclusiveLimit": 1}]},
            "rollback": {"onAnalysisFailure": True, "alerts": {"matchers": [{"name": "severity", "value": "critical"}]}},
            "progressDeadline": "10m",
        },
    }


def model_version(version: str) -> Callable[[Obj], None]:
    return lambda o: o["spec"]["model"]["foundationModel"].update({"version": version})


def spec_field(*path: str, value: Any) -> Callable[[Obj], None]:
    def change(o: Obj) -> None:
        node = o["spec"]
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return change


def requested(obj: Obj, action: str) -> Obj:
    """`obj` as an Argo CD action leaves it (at ACTION_TIME, with no earlier request of that second)."""
    out = copy.deepcopy(obj)
    if action in REQUESTS:
        out["metadata"].setdefault("annotations", {})[REQUESTS[action]] = REQUEST
    else:
        out["spec"]["paused"] = action == "pause"
    return out


# ---------------------------------------------------------------- what each snapshot must be
Says = str | Callable[[Obj], str]


def condition(type_: str) -> Callable[[Obj], str]:
    return lambda o: str(next(c for c in o["status"]["conditions"] if c["type"] == type_)["message"])


def message(o: Obj) -> str:
    return str(o["status"]["message"])


def finished(verb: str) -> Callable[[Obj], str]:
    return lambda o: f"Revision {o['status']['revision']} {verb}: {o['status']['rollbackReason']}"


def stale(generation: int, observed: int) -> str:
    return f"Waiting for the fm-operator to observe spec generation {generation} (status is of generation {observed})"


@dataclass(frozen=True)
class Case:
    """One snapshot and the health Argo CD must show for it (the message as given, or read off the object)."""

    obj: Obj
    health: Health
    says: Says
    enabled: tuple[str, ...] = ()  # Rollout: the actions discovery.lua offers (the others are disabled)

    def message(self) -> str:
        return self.says if isinstance(self.says, str) else self.says(self.obj)


@dataclass
class Fixtures:
    cases: dict[str, Case] = field(default_factory=dict)  # "Rollout/suspended_waitingForPromotion" -> ...
    worlds: dict[str, Cluster] = field(default_factory=dict)  # the same keys -> the cluster at that moment

    def snap(self, c: Cluster, kind: Kind, name: str, file: str, health: Health, says: Says, enabled: tuple[str, ...] = ()) -> None:
        key = f"{kind.kind}/{file}"
        assert key not in self.cases, key
        self.cases[key] = Case(c.object(kind, name), health, says, enabled)
        self.worlds[key] = c.fork()


FM, TA, RO = FOUNDATION_MODEL, TASK_ADAPTER, ROLLOUT


def phase(*wanted: str) -> Callable[[Obj], bool]:
    return lambda s: s.get("phase") in wanted


def at_step(index: int) -> Callable[[Obj], bool]:
    return lambda s: s.get("currentStepIndex") == index


@cache
def make() -> Fixtures:
    """Every snapshot, in the order a cluster lives them."""
    f = Fixtures()
    c = Cluster()

    # A FoundationModel and its TaskAdapter train: v1, then v2 after a spec edit.
    c.create(foundation_model())
    f.snap(c, FM, "movielens", "progressing_noStatus", "Progressing", "Waiting for the fm-operator to reconcile the FoundationModel")
    c.create(task_adapter())
    c.tick((TA, "west-coast"))
    f.snap(c, TA, "west-coast", "progressing_waitingForFoundationModel", "Progressing", condition("ResolvedRefs"))
    c.tick((FM, "movielens"))
    f.snap(c, FM, "movielens", "progressing_trainingSubmitted", "Progressing", message)
    c.argo("movielens", "Running")
    c.tick((FM, "movielens"))
    f.snap(c, FM, "movielens", "progressing_training", "Progressing", message)
    c.argo("movielens", "Succeeded", ndcg=0.1012)
    c.tick((FM, "movielens"), (TA, "west-coast"))
    f.snap(c, FM, "movielens", "healthy_versionAvailable", "Healthy", condition("Ready"))
    c.argo("west-coast", "Running")
    c.tick((TA, "west-coast"))
    f.snap(c, TA, "west-coast", "progressing_fineTuning", "Progressing", message)
    c.argo("west-coast", "Succeeded", ndcg=0.1190)
    c.tick((TA, "west-coast"))
    f.snap(c, TA, "west-coast", "healthy_versionAvailable", "Healthy", condition("Ready"))

    b = c.fork()
    b.edit(TA, "west-coast", spec_field("training", "epochs", value=8))
    f.snap(b, TA, "west-coast", "progressing_newGeneration", "Progressing", stale(2, 1))
    b.tick((TA, "west-coast"))
    b.argo("west-coast", "Failed", failed_step="finetune", log="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    b.tick((TA, "west-coast"))
    f.snap(b, TA, "west-coast", "degraded_fineTuningFailed", "Degraded", message)
    b = c.fork()
    b.create(task_adapter("east-coast", foundation_model="movielens-jp"))
    b.tick((TA, "east-coast"))
    f.snap(b, TA, "east-coast", "degraded_foundationModelNotFound", "Degraded", condition("ResolvedRefs"))
    b = c.fork()  # pinned to a version the FoundationModel does not have, and trains nothing now
    b.create(task_adapter("pinned", pinned="v9"))
    b.tick((TA, "pinned"))
    f.snap(b, TA, "pinned", "degraded_versionNotFound", "Degraded", condition("Stalled"))
    b = Cluster()  # the FoundationModel's first training fails: its TaskAdapter waits for nothing
    b.create(foundation_model())
    b.create(task_adapter())
    b.tick((FM, "movielens"))
    b.argo("movielens", "Failed", failed_step="pretrain", log="FileNotFoundError: s3://recsys-events/interactions/2026/")
    b.tick((FM, "movielens"), (TA, "west-coast"))
    f.snap(b, TA, "west-coast", "degraded_foundationModelStalled", "Degraded", condition("Stalled"))

    c.edit(FM, "movielens", spec_field("training", "epochs", value=30))
    f.snap(c, FM, "movielens", "progressing_newGeneration", "Progressing", stale(2, 1))
    c.tick((FM, "movielens"))
    c.argo("movielens", "Running")
    c.tick((FM, "movielens"))
    f.snap(c, FM, "movielens", "progressing_trainingNextVersion", "Progressing", message)  # v1 serves meanwhile: Ready True
    c.argo("movielens", "Succeeded", ndcg=0.1047)
    c.tick((FM, "movielens"), (TA, "west-coast"))
    c.argo("west-coast", "Succeeded", ndcg=0.1231)
    c.tick((TA, "west-coast"))
    assert [v["version"] for v in c.status(TA, "west-coast")["versions"]] == ["v1", "v2"]

    b = c.fork()
    b.edit(FM, "movielens", spec_field("training", "epochs", value=40))
    b.tick((FM, "movielens"))
    b.argo("movielens", "Failed", failed_step="pretrain", log="ValueError: featureSchema.actionField 'rating' is not a column of the data")
    b.tick((FM, "movielens"))
    f.snap(b, FM, "movielens", "degraded_trainingFailed", "Degraded", message)
    b = c.fork()
    b.edit(FM, "movielens", spec_field("architecture", "eventFields", value=["item", "action", "timeGap", "device"]))
    b.tick((FM, "movielens"))
    f.snap(b, FM, "movielens", "degraded_invalidSpec", "Degraded", condition("Accepted"))
    b = Cluster(trainer_image="")
    b.create(foundation_model())
    b.tick((FM, "movielens"))
    f.snap(b, FM, "movielens", "degraded_trainingOff", "Degraded", condition("Training"))

    # A Rollout serves v1 (its first revision), then rolls v2 out: shadow, canary steps, a pause for a person.
    b = c.fork()
    b.create(rollout("v3"))
    b.tick((RO, "recommender"))
    f.snap(b, RO, "recommender", "progressing_waitingForVersion", "Progressing", message, ("pause",))

    b = c.fork()  # an adapter of another FoundationModel
    b.create(task_adapter("kanto", foundation_model="movielens-jp"))
    b.create(rollout("v2", adapter="kanto"))
    b.tick((RO, "recommender"))
    f.snap(b, RO, "recommender", "degraded_invalidSpec", "Degraded", condition("Accepted"))

    r = c.fork()
    r.create(rollout("v1"))
    f.snap(r, RO, "recommender", "progressing_noStatus", "Progressing", "Waiting for the fm-operator to reconcile the Rollout")
    r.tick((RO, "recommender"))
    f.snap(r, RO, "recommender", "progressing_firstRevision", "Progressing", message, ("pause",))
    r.until(RO, "recommender", phase("Promoted"))
    f.snap(r, RO, "recommender", "healthy_firstRevisionPromoted", "Healthy", condition("Ready"))
    r.edit(RO, "recommender", model_version("v2"))
    f.snap(r, RO, "recommender", "progressing_newGeneration", "Progressing", stale(2, 1))

    b = r.fork()  # the canary's predictors never come up
    b.not_ready["recommender"] = "predictor container exited: CrashLoopBackOff (OOMKilled)"
    b.until(RO, "recommender", phase("Failed"))
    f.snap(b, RO, "recommender", "degraded_progressDeadlineExceeded", "Degraded", finished("failed"), ("retry",))

    r.tick((RO, "recommender"))
    f.snap(r, RO, "recommender", "progressing_canaryPending", "Progressing", message, ("abort", "pause"))
    r.until(RO, "recommender", phase("Shadowing"))
    f.snap(r, RO, "recommender", "progressing_shadowing", "Progressing", message, ("abort", "pause"))
    r.until(RO, "recommender", at_step(0))
    f.snap(r, RO, "recommender", "progressing_canaryWeight", "Progressing", message, ("abort", "pause"))

    b = r.fork()
    b.edit(RO, "recommender", spec_field("paused", value=True))
    b.tick((RO, "recommender"))
    f.snap(b, RO, "recommender", "suspended_pausedBySpec", "Suspended", message, ("abort", "resume"))
    b = r.fork()  # Prometheus has no data, then the canary's error rate is too high
    b.prometheus["recommender"] = ["Inconclusive", "Failed"]
    b.until(RO, "recommender", phase("Paused"))
    f.snap(b, RO, "recommender", "suspended_analysisInconclusive", "Suspended", message, ("abort", "pause"))
    b.until(RO, "recommender", phase("RolledBack"))
    f.snap(b, RO, "recommender", "degraded_rolledBack", "Degraded", finished("rolled back"), ("retry",))
    b = r.fork()  # the same failure with automatic rollback switched off: the canary is held for a person
    b.edit(RO, "recommender", spec_field("rollback", "onAnalysisFailure", value=False))
    b.prometheus["recommender"] = ["Failed"]
    b.until(RO, "recommender", phase("Paused"))
    f.snap(b, RO, "recommender", "degraded_analysisFailed", "Degraded", message, ("abort", "pause"))

    r.until(RO, "recommender", at_step(2))
    f.snap(r, RO, "recommender", "suspended_waitingForPromotion", "Suspended", message, ("promote", "abort", "pause"))
    b = r.fork()
    b.annotate(RO, "recommender", ABORT_ANNOTATION, REQUEST)
    b.tick((RO, "recommender"))
    f.snap(b, RO, "recommender", "degraded_aborted", "Degraded", finished("rolled back"), ("retry",))
    r.annotate(RO, "recommender", PROMOTE_ANNOTATION, REQUEST)
    r.until(RO, "recommender", phase("Promoted"))
    f.snap(r, RO, "recommender", "healthy_promoted", "Healthy", condition("Ready"))

    # The FoundationModel's next version is worse than v2: held back; a Rollout asked to serve it holds.
    r.edit(FM, "movielens", spec_field("training", "epochs", value=50))
    r.tick((FM, "movielens"))
    r.argo("movielens", "Succeeded", ndcg=0.0853)
    r.tick((FM, "movielens"))
    f.snap(r, FM, "movielens", "degraded_heldBack", "Degraded", condition("Stalled"))
    r.edit(RO, "recommender", model_version("v3"))
    r.tick((RO, "recommender"))
    f.snap(r, RO, "recommender", "degraded_versionHeldBack", "Degraded", message)
    return f


# ---------------------------------------------------------------- the files
def _yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


class _Literal(str):
    """A string dumped as a YAML literal block (|), as Lua reads best in argocd-cm."""


def _literal(dumper: yaml.SafeDumper, text: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")


yaml.SafeDumper.add_representer(_Literal, _literal)


def argocd_cm() -> str:
    """The argocd-cm keys that install every check and action (merge them into argocd-cm)."""
    data: dict[str, str] = {}
    for kind in KINDS:
        data[f"resource.customizations.health.fmops.dev_{kind}"] = _Literal((CUSTOMIZATIONS / kind / "health.lua").read_text())
    actions = CUSTOMIZATIONS / "Rollout" / "actions"
    definitions = [{"name": a, "action.lua": _Literal((actions / a / "action.lua").read_text())} for a in ACTIONS]
    data["resource.customizations.actions.fmops.dev_Rollout"] = _Literal(
        _yaml({"discovery.lua": _Literal((actions / "discovery.lua").read_text()), "definitions": definitions}))
    return (f"# Made by `{COMMAND}` from charts/argocd/resource_customizations; do not edit.\n"
            "# Argo CD health checks and actions for the fm-operator's kinds, as argocd-cm keys. Merge them in:\n"
            "#   kubectl -n argocd patch configmap argocd-cm --patch-file charts/argocd/argocd-cm.yaml\n"
            + _yaml({"data": data}))


def files() -> dict[Path, str]:
    """Every file this module makes, with its text."""
    f = make()
    out: dict[Path, str] = {ARGOCD_CM: argocd_cm()}
    tests: dict[str, list[Obj]] = {}
    for key, case in f.cases.items():
        kind, name = key.split("/")
        out[CUSTOMIZATIONS / kind / "testdata" / f"{name}.yaml"] = HEADER + _yaml(case.obj)
        tests.setdefault(kind, []).append({"healthStatus": {"status": case.health, "message": case.message()},
                                           "inputPath": f"testdata/{name}.yaml"})
    for kind, cases in tests.items():
        out[CUSTOMIZATIONS / kind / "health_test.yaml"] = HEADER + _yaml({"tests": cases})

    rollouts = {key.split("/")[1]: case for key, case in f.cases.items() if key.startswith("Rollout/")}
    discovery = [{"inputPath": f"../testdata/{name}.yaml", "result": [{"name": a, "disabled": a not in case.enabled} for a in ACTIONS]}
                 for name, case in rollouts.items()]
    action_tests = []
    for action, name in ACTION_CASES:
        assert action in rollouts[name].enabled, f"{action} is not offered on {name}"
        expected = f"testdata/{name}_{action}.yaml"
        out[CUSTOMIZATIONS / "Rollout" / "actions" / expected] = HEADER + _yaml(requested(rollouts[name].obj, action))
        action_tests.append({"action": action, "inputPath": f"../testdata/{name}.yaml", "expectedOutputPath": expected})
    out[CUSTOMIZATIONS / "Rollout" / "actions" / "action_test.yaml"] = HEADER + _yaml({"discoveryTests": discovery, "actionTests": action_tests})
    return out


def made_here() -> list[Path]:
    """The files of the kinds this module writes that are in the checkout now (to find stale ones)."""
    found = [p for p in CUSTOMIZATIONS.glob("*/testdata/*.yaml")] + list(CUSTOMIZATIONS.glob("*/actions/testdata/*.yaml"))
    found += [p for p in (*CUSTOMIZATIONS.glob("*/health_test.yaml"), *CUSTOMIZATIONS.glob("*/actions/action_test.yaml"), ARGOCD_CM) if p.exists()]
    return sorted(found)


def differences() -> list[str]:
    """How the checkout differs from what this module makes now: a unified diff per file ([] when in sync)."""
    wanted = files()
    out = []
    for path in sorted(set(wanted) | set(made_here())):
        if path not in wanted:
            out.append(f"{path.relative_to(REPO)}: no case makes it any more (the refresh removes it)\n")
            continue
        have = path.read_text() if path.exists() else ""
        want = wanted[path]
        if have != want:
            rel = str(path.relative_to(REPO))
            out.append("".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True), f"a/{rel}", f"b/{rel}", n=1)))
    return out


def write() -> list[str]:
    """Bring the checkout in line with files(): what it wrote and removed."""
    wanted = files()
    done = []
    for path in made_here():
        if path not in wanted:
            path.unlink()
            done.append(f"removed {path.relative_to(REPO)}")
    for path, text in wanted.items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            done.append(f"wrote {path.relative_to(REPO)}")
    return done


def main(argv: list[str]) -> int:
    logging.disable(logging.WARNING)  # the operator's own log of what it did: the files are the output here
    if argv[1:] == ["--check"]:
        diffs = differences()
        sys.stdout.write("".join(diffs))
        return 1 if diffs else 0
    done = write()
    print("\n".join(done) if done else "charts/argocd is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
