"""The training planner, pure: (object, its Workflows as found, now) -> Plan (status + Workflow actions).

One training Workflow per object at a time, for its current spec generation (and, for a TaskAdapter,
its current base FoundationModel version; for a FoundationModel, its data revision). A Workflow of an
older generation that is still running is superseded (deleted); a finished one is kept until its
version is pruned by versionHistoryLimit. Deleting a failed Workflow retries it.

Both kinds walk the same four cases, `_walk`: no Workflow for the current spec (trained already, or
submit one), one running, one failed, one succeeded (record its version once). What differs (which
Workflow is current, how a Workflow is rendered, how a version is recorded, the words) is a small
strategy per kind: `_FoundationModel`, `_TaskAdapter`.

Every plan says where the object stands for kstatus (fmop.assess): Reconciling while a Workflow is submitted
or running (or, for a TaskAdapter, while its FoundationModel trains the version it waits for), Stalled when
nothing more happens without a person: an invalid spec, a Workflow that cannot be rendered or failed (a failed
one is not retried until it is deleted), a missing or stalled FoundationModel, no trainer image and no version,
or a FoundationModel whose versions for its current spec the quality gate all held back.

fmop.training.versions carries a plan out: when `read_log` is set it reads that log tail and merges it
with `with_log` (pure), writes the status `verdict` says (re-planning when another writer got there
first), applies `create` and deletes `delete`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pydantic import ValidationError

from fmop.api import FoundationModel, TaskAdapter
from fmop.assess import (
    ACCEPTED,
    KSTATUS,
    READY,
    STALLED,
    Verdict,
    assess_foundation_model,
    assess_task_adapter,
    reconciled,
    reconciling,
    stalled,
    with_kstatus,
)
from fmop.conditions import Cond
from fmop.kinds import FOUNDATION_MODEL, TASK_ADAPTER
from fmop.training.render import (
    DATA_REVISION_ANNOTATION,
    LABEL_BASE,
    LABEL_DATA_REVISION,
    LABEL_GENERATION,
    LABEL_VERSION,
    RenderError,
    Target,
    data_revision_label,
    fm_artifacts,
    render_foundation_model,
    render_task_adapter,
    ta_artifact,
)

Obj = dict[str, Any]
TRAINING, QUALITY_GATE = "Training", "QualityGate"
GATE_METRIC = "NDCG@10"
FINISHED = ("Succeeded", "Failed", "Error")
MESSAGE_TAIL = 600  # characters of a failed step's log in the message
MESSAGE_LIMIT = 4096  # status.message's maxLength
# How Argo marks the pods of a Workflow's steps.
ARGO_WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
ARGO_NODE_ANNOTATION = "workflows.argoproj.io/node-id"


@dataclass(frozen=True)
class StepLog:
    """A log the plan wants in its message: the main container of the pod that ran a failed step."""

    workflow: str
    node_id: str
    container: str = "main"
    lines: int = 20

    @property
    def labels(self) -> dict[str, str]:
        return {ARGO_WORKFLOW_LABEL: self.workflow}

    @property
    def annotations(self) -> dict[str, str]:
        return {ARGO_NODE_ANNOTATION: self.node_id}


@dataclass(frozen=True)
class Plan:
    """What to do for one object, in the order the handler does it."""

    verdict: Verdict  # the status to patch
    create: Obj | None = None  # the Workflow to apply
    delete: tuple[str, ...] = ()  # Workflows to delete (superseded, or of pruned versions)
    read_log: StepLog | None = None  # read this log tail and merge it with with_log() before patching


def plan(obj: Obj, workflows: list[Obj], now: str, *, image: str, foundation_model: Obj | None = None) -> Plan:
    """The plan for a FoundationModel or a TaskAdapter (obj["kind"]), given its Workflows as found.

    image: the trainer image ("" trains nothing); foundation_model: a TaskAdapter's FoundationModel as
    found (None: it does not exist); now: the time a recorded version is stamped with."""
    strategy: _Strategy | Plan
    if obj.get("kind") == TASK_ADAPTER.kind:
        strategy = _TaskAdapter.of(obj, foundation_model, image)
    elif obj.get("kind") == FOUNDATION_MODEL.kind:
        strategy = _FoundationModel.of(obj, image)
    else:
        raise ValueError(f"the training planner plans FoundationModels and TaskAdapters, not {obj.get('kind')!r}")
    if isinstance(strategy, Plan):
        return strategy
    return _walk(strategy, workflows, obj.get("status") or {}, now)


def with_log(p: Plan, tail: str) -> Plan:
    """The plan with the failed step's log tail (read as p.read_log asked) at the end of its message."""
    if p.read_log is None:
        return p
    if not tail:
        return replace(p, read_log=None)
    suffix = f"; log tail: {tail.strip()[-MESSAGE_TAIL:]}"
    training = next(c for c in p.verdict.conditions if c.type == TRAINING)
    message = training.message + suffix
    conditions = [replace(c, message=message) if c.type == TRAINING else
                  replace(c, message=message[:MESSAGE_LIMIT]) if c.type == STALLED and c.status == "True" and c.reason == training.reason else c
                  for c in p.verdict.conditions]
    return replace(p, verdict=replace(p.verdict, conditions=conditions, message=message[:MESSAGE_LIMIT]), read_log=None)


# ---------------------------------------------------------------- the four cases, shared
def _walk(k: _Strategy, workflows: list[Obj], status: Obj, now: str) -> Plan:
    versions: list[Obj] = list(status.get("versions") or [])
    latest: str | None = status.get("latestVersion")
    current = _current(workflows, k.match)

    def keep() -> set[str]:
        return {str(v["version"]) for v in versions}

    def cannot_render(err: RenderError) -> Plan:
        return Plan(with_kstatus(Verdict("Failed", k.conditions(versions, latest, Cond(TRAINING, "False", "CannotRender", str(err))), str(err),
                                         dict(k.extra)), stalled("CannotRender", str(err))))

    # 1. No Workflow for the current spec: trained already, or submit one.
    if current is None:
        if k.trained(versions):
            phase, msg = k.idle(latest)
            return Plan(with_kstatus(Verdict(phase, k.conditions(versions, latest), msg,
                                             {**k.extra, "workflowName": status.get("workflowName"), "progress": status.get("progress")}),
                                     k.done(versions, latest)),
                        delete=_to_delete(workflows, None, keep()))
        version = next_version(versions)
        try:
            wf = k.render(version)
        except RenderError as err:
            return cannot_render(err)
        name = _name(wf)
        msg = k.submitted(version, name)
        return Plan(with_kstatus(Verdict("Training", k.conditions(versions, latest, Cond(TRAINING, "True", "WorkflowSubmitted", msg)), msg,
                                         {**k.extra, "workflowName": name, "progress": "0/0"}), reconciling("WorkflowSubmitted", msg)),
                    create=wf, delete=_to_delete(workflows, None, keep()))

    name, phase, version = _name(current), _phase(current), _labels(current).get(LABEL_VERSION, "v1")
    progress = _progress(current)
    following = {**k.extra, "workflowName": name, "progress": progress}
    # 2. Running.
    if phase not in FINISHED:
        msg = f"{k.doing} {version} in Workflow {name}: {phase}, {progress} steps"
        return Plan(with_kstatus(Verdict("Training", k.conditions(versions, latest, Cond(TRAINING, "True", "WorkflowRunning", msg)), msg,
                                         following), reconciling("WorkflowRunning", msg)),
                    delete=_to_delete(workflows, current, keep()))
    # 3. Failed: the step that broke, and (read by the handler) the tail of its log. Stalled: retried only when deleted.
    if phase != "Succeeded":
        msg = f"{k.doing} {version} failed in Workflow {name}: {failure(current)}"
        node = failed_pod(current)
        return Plan(with_kstatus(Verdict("Failed", k.conditions(versions, latest, Cond(TRAINING, "False", "WorkflowFailed", msg)), msg[:MESSAGE_LIMIT],
                                         following), stalled("WorkflowFailed", msg[:MESSAGE_LIMIT])),
                    delete=_to_delete(workflows, current, keep()), read_log=StepLog(name, node) if node else None)
    # 4. Succeeded: record its version once (under the next free version when another writer took its number
    # meanwhile: versions are keyed by version, and its artifacts stay where the Workflow wrote them).
    more: list[Cond] = []
    if not any(v.get("workflow") == name for v in versions):
        as_version = next_version(versions) if any(v.get("version") == version for v in versions) else version
        try:
            versions, latest, more = k.record(current, version, as_version, versions, latest, now)
        except RenderError as err:
            return cannot_render(err)
    version = next((str(v["version"]) for v in versions if v.get("workflow") == name), version)
    phase, msg = k.succeeded(version, name, versions, latest)
    return Plan(with_kstatus(Verdict(phase, k.conditions(versions, latest, Cond(TRAINING, "False", "Succeeded", msg), *more), msg,
                                     {**following, "versions": versions, "latestVersion": latest}), k.done(versions, latest)),
                delete=_to_delete(workflows, current, keep()))


class _Strategy(ABC):
    """What the walk needs to know of one kind."""

    doing: ClassVar[str]  # "training", "fine-tuning": how messages say what a Workflow does
    match: dict[str, str]  # the labels of the Workflow for the current spec ("": label absent)
    extra: dict[str, Any]  # status fields every plan of this object sets

    @abstractmethod
    def conditions(self, versions: list[Obj], latest: str | None, *more: Cond) -> list[Cond]:
        """The conditions to set: the assessment's, Ready for these versions, then `more`."""

    @abstractmethod
    def trained(self, versions: list[Obj]) -> bool:
        """Is there a version for the current spec already (nothing to train)?"""

    @abstractmethod
    def idle(self, latest: str | None) -> tuple[str, str]:
        """(phase, message) when trained and nothing runs."""

    @abstractmethod
    def render(self, version: str) -> Obj:
        """The Workflow that trains `version`; RenderError when the spec cannot run."""

    @abstractmethod
    def submitted(self, version: str, workflow: str) -> str:
        """The message when `workflow` is submitted."""

    @abstractmethod
    def record(self, wf: Obj, version: str, as_version: str, versions: list[Obj], latest: str | None, now: str) -> tuple[list[Obj], str | None, list[Cond]]:
        """(versions, latestVersion, extra conditions) once `wf` succeeded with `version`, recorded as `as_version`."""

    @abstractmethod
    def succeeded(self, version: str, workflow: str, versions: list[Obj], latest: str | None) -> tuple[str, str]:
        """(phase, message) when `workflow` succeeded (and its version is recorded)."""

    @abstractmethod
    def done(self, versions: list[Obj], latest: str | None) -> list[Cond]:
        """Reconciling and Stalled once the current spec is trained and nothing runs (the same whether its Workflow
        is still listed or gone, so the status does not change when it goes)."""


class _Common:
    """What both strategies read off the object the same way."""

    def __init__(self, obj: Obj) -> None:
        meta = obj.get("metadata", {})
        self.namespace, self.name, self.uid = str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", ""))
        self.generation = int(meta.get("generation") or 1)

    def target(self, version: str, data_revision: str = "") -> Target:
        return Target(self.namespace, self.name, self.uid, self.generation, version, data_revision)


# ---------------------------------------------------------------- FoundationModel
class _FoundationModel(_Common, _Strategy):
    doing = "training"

    def __init__(self, obj: Obj, fm: FoundationModel, accepted: Cond, image: str) -> None:
        super().__init__(obj)
        self.fm, self.accepted, self.image = fm, accepted, image
        self.data_revision = str((obj.get("metadata", {}).get("annotations") or {}).get(DATA_REVISION_ANNOTATION) or "")
        self.match = {LABEL_GENERATION: str(self.generation), LABEL_DATA_REVISION: data_revision_label(self.data_revision)}
        self.extra = {}

    @classmethod
    def of(cls, obj: Obj, image: str) -> _FoundationModel | Plan:
        base = assess_foundation_model(obj)
        if base.phase == "Failed":
            return Plan(base)
        if not image:
            return Plan(_untrained(base))
        try:
            fm = FoundationModel.model_validate(_essence(obj))
        except ValidationError as err:  # assess_foundation_model reports it; unreachable in practice
            return Plan(Verdict("Failed", [Cond(ACCEPTED, "False", "Invalid", str(err)), *stalled("Invalid", str(err))], str(err)))
        return cls(obj, fm, next(c for c in base.conditions if c.type == ACCEPTED), image)

    def conditions(self, versions: list[Obj], latest: str | None, *more: Cond) -> list[Cond]:
        if latest:
            return [self.accepted, Cond(READY, "True", "VersionAvailable", f"version {latest} is available"), *more]
        return [self.accepted, Cond(READY, "False", "NoVersion", "no trained version yet; versions appear in status.versions once a "
                                                                 "training Workflow succeeds"), *more]

    def trained(self, versions: list[Obj]) -> bool:
        return any(_trained(v, self.generation, self.data_revision) for v in versions)

    def idle(self, latest: str | None) -> tuple[str, str]:
        return ("Ready", f"latest version {latest}") if latest else ("Failed", "")

    def render(self, version: str) -> Obj:
        return render_foundation_model(self.fm, self.target(version, self.data_revision), self.image)

    def submitted(self, version: str, workflow: str) -> str:
        on_data = f", data revision {self.data_revision}" if self.data_revision else ""
        return f"training {version} (spec generation {self.generation}{on_data}) in Workflow {workflow}"

    def record(self, wf: Obj, version: str, as_version: str, versions: list[Obj], latest: str | None, now: str) -> tuple[list[Obj], str | None, list[Cond]]:
        out = _outputs(wf)
        data = _parse_json(out.get("data", ""))
        metrics = {k: float(v) for k, v in _parse_json(out.get("metrics", "")).items() if isinstance(v, int | float)}
        tr = self.fm.spec.training
        settings = {"epochs": float(tr.epochs), "batchSize": float(tr.batchSize), "learningRate": tr.learningRate}
        artifact, checkpoint = fm_artifacts(self.fm, self.target(version))
        previous = next((v for v in versions if v.get("version") == latest), None)
        passes, comparison = gate(metrics, previous.get("metrics") if previous else None, self.fm.spec.qualityGate.ndcgTolerance)
        versions = [*versions, {
            "version": as_version, "artifactUri": artifact, "checkpointUri": checkpoint, "gate": "Passed" if passes else "HeldBack",
            "dataFingerprint": str(data.get("dataFingerprint", "")), "featureFingerprint": str(data.get("featureFingerprint", "")),
            "metrics": {**metrics, **settings}, "workflow": _name(wf), "specGeneration": self.generation, "createdAt": now,
            **({"dataRevision": self.data_revision} if self.data_revision else {})}]
        if passes:
            latest = as_version
            gated = Cond(QUALITY_GATE, "True", "Passed", f"{as_version} passed the quality gate: {comparison}")
        else:
            gated = Cond(QUALITY_GATE, "False", "NDCGRegressed",
                         f"{as_version} is held back: {comparison} against latest {previous and previous['version']}; "
                         f"it is recorded in status.versions but latestVersion stays {latest} "
                         "(raise spec.qualityGate.ndcgTolerance to accept it)")
        return _prune(versions, self.fm.spec.versionHistoryLimit, latest), latest, [gated]

    def succeeded(self, version: str, workflow: str, versions: list[Obj], latest: str | None) -> tuple[str, str]:
        recorded = next((v for v in versions if v.get("workflow") == workflow), None)
        msg = f"trained {version} in Workflow {workflow}" + (f"; latest version {latest}" if latest else "")
        if recorded and recorded.get("gate") == "HeldBack":
            msg += f"; {version} held back by the quality gate"
        return ("Ready" if latest else "Failed"), msg

    def done(self, versions: list[Obj], latest: str | None) -> list[Cond]:
        mine = [v for v in versions if _trained(v, self.generation, self.data_revision)]
        if mine and all(v.get("gate") == "HeldBack" for v in mine):
            held = ", ".join(str(v["version"]) for v in mine)
            return stalled("VersionHeldBack", f"{held}, trained for this spec, held back by the quality gate (see condition QualityGate); "
                                              f"latestVersion stays {latest or 'unset'}: raise spec.qualityGate.ndcgTolerance to accept it, "
                                              "or change the spec or its data to train a better one")
        if not latest:
            return stalled("NoVersion", "versions are recorded but none is status.latestVersion; set it to one of status.versions")
        return reconciled()


# ---------------------------------------------------------------- TaskAdapter
class _TaskAdapter(_Common, _Strategy):
    doing = "fine-tuning"

    def __init__(self, obj: Obj, ta: TaskAdapter, base: Verdict, base_version: str, fm: Obj, image: str) -> None:
        super().__init__(obj)
        self.ta, self.base_version, self.image = ta, base_version, image
        self.assessed = [c for c in base.conditions if c.type != READY and c.type not in KSTATUS]
        self.fm_version: Obj = next((v for v in (fm.get("status") or {}).get("versions") or [] if v.get("version") == base_version), {})
        self.match = {LABEL_GENERATION: str(self.generation), LABEL_BASE: base_version}
        self.extra = {"baseVersion": base_version}

    @classmethod
    def of(cls, obj: Obj, fm: Obj | None, image: str) -> _TaskAdapter | Plan:
        base = assess_task_adapter(obj, fm)
        base_version = base.extra.get("baseVersion")
        if base_version is None or fm is None:  # invalid, or nothing to fine-tune on yet
            return Plan(base)
        if not image:
            return Plan(_untrained(base))
        try:
            ta = TaskAdapter.model_validate(_essence(obj))
        except ValidationError as err:
            return Plan(Verdict("Failed", [Cond(ACCEPTED, "False", "Invalid", str(err)), *stalled("Invalid", str(err))], str(err)))
        return cls(obj, ta, base, str(base_version), fm, image)

    @property
    def fm_name(self) -> str:
        return self.ta.spec.foundationModel.name

    def conditions(self, versions: list[Obj], latest: str | None, *more: Cond) -> list[Cond]:
        own = [v for v in versions if v.get("foundationModelVersion") == self.base_version]
        if own:
            ready = Cond(READY, "True", "VersionAvailable", f"adapter {own[-1]['version']} on {self.base_version}")
        else:
            ready = Cond(READY, "False", "NoVersion", f"no adapter version trained on {self.fm_name} {self.base_version} yet")
        return [*self.assessed, ready, *more]

    def trained(self, versions: list[Obj]) -> bool:
        return any(_trained(v, self.generation) and v.get("foundationModelVersion") == self.base_version for v in versions)

    def idle(self, latest: str | None) -> tuple[str, str]:
        return "Ready", f"adapter {latest} on {self.base_version}"

    def render(self, version: str) -> Obj:
        if not self.fm_version.get("checkpointUri"):
            raise RenderError(f"FoundationModel {self.fm_name} {self.base_version} has no checkpointUri: "
                              "it was not trained by this operator; pin a version it trained")
        return render_task_adapter(self.ta, self.target(version), self.base_version, str(self.fm_version["checkpointUri"]), self.image)

    def submitted(self, version: str, workflow: str) -> str:
        return f"fine-tuning {version} on {self.fm_name} {self.base_version} in Workflow {workflow}"

    def record(self, wf: Obj, version: str, as_version: str, versions: list[Obj], latest: str | None, now: str) -> tuple[list[Obj], str | None, list[Cond]]:
        result = _parse_json(_outputs(wf).get("metrics", ""))
        after = result.get("fm_plus_adapter") or {}
        before = result.get("frozen_fm") or {}
        metrics = {k: float(v) for k, v in after.items() if isinstance(v, int | float)}
        metrics.update({f"frozen {k}": float(v) for k, v in before.items() if k in ("HR@10", "NDCG@10") and isinstance(v, int | float)})
        for key, label in (("adapter_params", "adapterParams"), ("users", "testUsers")):
            if isinstance(result.get(key), int | float):
                metrics[label] = float(result[key])
        versions = [*versions, {"version": as_version, "foundationModelVersion": self.base_version, "artifactUri": ta_artifact(self.target(version)),
                                "metrics": metrics, "workflow": _name(wf), "specGeneration": self.generation, "createdAt": now}]
        return _prune(versions, self.ta.spec.versionHistoryLimit, as_version), as_version, []

    def succeeded(self, version: str, workflow: str, versions: list[Obj], latest: str | None) -> tuple[str, str]:
        return "Ready", f"fine-tuned {version} on {self.fm_name} {self.base_version} in Workflow {workflow}"

    def done(self, versions: list[Obj], latest: str | None) -> list[Cond]:
        return reconciled()


# ---------------------------------------------------------------- reading Workflows and versions
def _labels(wf: Obj) -> dict[str, str]:
    labels: dict[str, str] = wf.get("metadata", {}).get("labels") or {}
    return labels


def _name(wf: Obj) -> str:
    return str(wf.get("metadata", {}).get("name", ""))


def _phase(wf: Obj) -> str:
    return str((wf.get("status") or {}).get("phase") or "Pending")


def _progress(wf: Obj) -> str:
    return str((wf.get("status") or {}).get("progress") or "0/0")


def _essence(obj: Obj) -> Obj:
    return {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if obj.get(k) is not None}


def _outputs(wf: Obj) -> dict[str, str]:
    """Output parameters of the Workflow's entrypoint (its root node, whose id is the Workflow's name)."""
    root = ((wf.get("status") or {}).get("nodes") or {}).get(_name(wf)) or {}
    return {p["name"]: str(p.get("value", "")) for p in (root.get("outputs") or {}).get("parameters") or [] if "name" in p}


def _failed_steps(wf: Obj) -> list[Obj]:
    """The failed Pod steps, the first to fail first."""
    nodes = list(((wf.get("status") or {}).get("nodes") or {}).values())
    failed = [n for n in nodes if n.get("phase") in ("Failed", "Error") and n.get("type") == "Pod"]
    failed.sort(key=lambda n: str(n.get("finishedAt") or n.get("startedAt") or ""))
    return failed


def failure(wf: Obj) -> str:
    """'step <name> failed: <message>' for the first failed Pod step (the step that broke)."""
    failed = _failed_steps(wf)
    if failed:
        node = failed[0]
        return f"step {node.get('displayName', node.get('name'))} failed: {node.get('message') or node.get('phase')}"
    status = wf.get("status") or {}
    return f"workflow {_name(wf)} {_phase(wf).lower()}: {status.get('message') or 'no step reported a message'}"


def failed_pod(wf: Obj) -> str | None:
    """The node id of the step failure() reports, whose pod's log the plan asks for."""
    failed = _failed_steps(wf)
    return str(failed[0]["id"]) if failed and failed[0].get("id") else None


def next_version(versions: list[Obj]) -> str:
    numbers = [int(str(v.get("version", "v0"))[1:]) for v in versions if str(v.get("version", "")).startswith("v")]
    return f"v{max(numbers, default=0) + 1}"


def _current(workflows: list[Obj], match: dict[str, str]) -> Obj | None:
    mine = [w for w in workflows if all(_labels(w).get(k, "") == v for k, v in match.items())]  # "": label absent
    mine.sort(key=lambda w: str(w.get("metadata", {}).get("creationTimestamp") or ""))
    return mine[-1] if mine else None


def _to_delete(workflows: list[Obj], current: Obj | None, kept_versions: set[str]) -> tuple[str, ...]:
    """Superseded Workflows (another generation, still running) and those of pruned versions."""
    out = []
    for w in workflows:
        if current is not None and _name(w) == _name(current):
            continue
        if w.get("metadata", {}).get("deletionTimestamp"):
            continue
        if _phase(w) not in FINISHED or _labels(w).get(LABEL_VERSION) not in kept_versions:
            out.append(_name(w))
    return tuple(sorted(out))


def _parse_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def gate(new: dict[str, float], latest: dict[str, float] | None, tolerance: float) -> tuple[bool, str]:
    """(passes, message): a version passes unless its NDCG@10 is more than `tolerance` (relative) below the latest's."""
    if not latest or GATE_METRIC not in latest or GATE_METRIC not in new or latest[GATE_METRIC] <= 0:
        return True, f"no earlier {GATE_METRIC} to compare with"
    change = new[GATE_METRIC] / latest[GATE_METRIC] - 1
    passes = change >= -tolerance
    return passes, (f"{GATE_METRIC} {new[GATE_METRIC]:.4f} vs {latest[GATE_METRIC]:.4f} ({100 * change:+.1f}%, "
                    f"tolerance -{100 * tolerance:.1f}%)")


def _prune(versions: list[Obj], limit: int, keep: str | None) -> list[Obj]:
    """The newest `limit` versions, always keeping `keep` (the latestVersion)."""
    if len(versions) <= limit:
        return versions
    newest = versions[-limit:]
    if keep and all(v["version"] != keep for v in newest):
        kept = next(v for v in versions if v["version"] == keep)
        newest = [kept, *versions[-(limit - 1):]] if limit > 1 else [kept]
    return newest


def _untrained(base: Verdict) -> Verdict:
    """No trainer image configured: the operator tracks versions recorded by others but trains nothing, so an object
    with no version to be Ready on is Stalled until a version is recorded or the operator gets an image."""
    msg = "training is off: start the operator with --trainer-image (FMOP_TRAINER_IMAGE), the image the training Workflows run"
    v = Verdict(base.phase, [*base.conditions, Cond(TRAINING, "False", "NoTrainerImage", msg)], base.message, base.extra)
    ready = next((c for c in base.conditions if c.type == READY), None)
    return v if ready is not None and ready.status == "True" else with_kstatus(v, stalled("NoTrainerImage", msg))


def _trained(v: Obj, generation: int, data_revision: str = "") -> bool:
    """A version of this spec generation and data revision; one recorded by hand (no specGeneration)
    counts for any."""
    if v.get("specGeneration") is None:
        return True
    return bool(v["specGeneration"] == generation and v.get("dataRevision", "") == data_revision)
