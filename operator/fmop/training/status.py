"""Version bookkeeping, pure: (object, its Workflows as found, now) -> Plan (status + Workflow actions).

One training Workflow per object at a time, for its current spec generation (and, for a TaskAdapter,
its current base FoundationModel version). A Workflow of an older generation that is still running is
superseded (deleted); a finished one is kept until its version is pruned by versionHistoryLimit.
Deleting a failed Workflow retries it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from fmop.api import FoundationModel, TaskAdapter
from fmop.assess import ACCEPTED, READY, Verdict, assess_foundation_model, assess_task_adapter
from fmop.conditions import Cond
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

TRAINING, QUALITY_GATE = "Training", "QualityGate"
GATE_METRIC = "NDCG@10"
FINISHED = ("Succeeded", "Failed", "Error")
MESSAGE_TAIL = 600


@dataclass(frozen=True)
class Plan:
    """What to do for one object: the status it should have and the Workflows to create or delete."""

    verdict: Verdict
    create: dict[str, Any] | None = None
    delete: tuple[str, ...] = ()
    events: tuple[str, ...] = field(default_factory=tuple)


def _labels(wf: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = wf.get("metadata", {}).get("labels") or {}
    return labels


def _name(wf: dict[str, Any]) -> str:
    return str(wf.get("metadata", {}).get("name", ""))


def _phase(wf: dict[str, Any]) -> str:
    return str((wf.get("status") or {}).get("phase") or "Pending")


def _essence(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec") if obj.get(k) is not None}


def _outputs(wf: dict[str, Any]) -> dict[str, str]:
    """Output parameters of the Workflow's entrypoint (its root node, whose id is the Workflow's name)."""
    root = ((wf.get("status") or {}).get("nodes") or {}).get(_name(wf)) or {}
    return {p["name"]: str(p.get("value", "")) for p in (root.get("outputs") or {}).get("parameters") or [] if "name" in p}


def failure(wf: dict[str, Any], log_tail: str = "") -> str:
    """'step <name> failed: <message>' for the first failed Pod step (the step that broke), with the log tail."""
    status = wf.get("status") or {}
    nodes = list((status.get("nodes") or {}).values())
    failed = [n for n in nodes if n.get("phase") in ("Failed", "Error") and n.get("type") == "Pod"]
    failed.sort(key=lambda n: str(n.get("finishedAt") or n.get("startedAt") or ""))
    if failed:
        node = failed[0]
        text = f"step {node.get('displayName', node.get('name'))} failed: {node.get('message') or node.get('phase')}"
    else:
        text = f"workflow {_name(wf)} {_phase(wf).lower()}: {status.get('message') or 'no step reported a message'}"
    if log_tail:
        text += f"; log tail: {log_tail.strip()[-MESSAGE_TAIL:]}"
    return text


def failed_pod(wf: dict[str, Any]) -> str | None:
    """The node id of the step failure() reports, for the handler to read that pod's log."""
    nodes = list(((wf.get("status") or {}).get("nodes") or {}).values())
    failed = [n for n in nodes if n.get("phase") in ("Failed", "Error") and n.get("type") == "Pod"]
    failed.sort(key=lambda n: str(n.get("finishedAt") or n.get("startedAt") or ""))
    return str(failed[0]["id"]) if failed and failed[0].get("id") else None


def next_version(versions: list[dict[str, Any]]) -> str:
    numbers = [int(str(v.get("version", "v0"))[1:]) for v in versions if str(v.get("version", "")).startswith("v")]
    return f"v{max(numbers, default=0) + 1}"


def _current(workflows: list[dict[str, Any]], match: dict[str, str]) -> dict[str, Any] | None:
    mine = [w for w in workflows if all(_labels(w).get(k, "") == v for k, v in match.items())]  # "": label absent
    mine.sort(key=lambda w: str(w.get("metadata", {}).get("creationTimestamp") or ""))
    return mine[-1] if mine else None


def _to_delete(workflows: list[dict[str, Any]], current: dict[str, Any] | None, kept_versions: set[str]) -> tuple[str, ...]:
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


def _prune(versions: list[dict[str, Any]], limit: int, keep: str | None) -> list[dict[str, Any]]:
    """The newest `limit` versions, always keeping `keep` (the latestVersion)."""
    if len(versions) <= limit:
        return versions
    newest = versions[-limit:]
    if keep and all(v["version"] != keep for v in newest):
        kept = next(v for v in versions if v["version"] == keep)
        newest = [kept, *versions[-(limit - 1):]] if limit > 1 else [kept]
    return newest


def _untrained(base: Verdict) -> Verdict:
    """No trainer image configured: the operator tracks versions recorded by others but trains nothing."""
    msg = "training is off: start the operator with --trainer-image (FMOP_TRAINER_IMAGE), the image the training Workflows run"
    return Verdict(base.phase, [*base.conditions, Cond(TRAINING, "False", "NoTrainerImage", msg)], base.message, base.extra)


def _trained(v: dict[str, Any], generation: int, data_revision: str = "") -> bool:
    """A version of this spec generation and data revision; one recorded by hand (no specGeneration)
    counts for any."""
    if v.get("specGeneration") is None:
        return True
    return bool(v["specGeneration"] == generation and v.get("dataRevision", "") == data_revision)


def _progress(wf: dict[str, Any]) -> str:
    return str((wf.get("status") or {}).get("progress") or "0/0")


# ---------------------------------------------------------------- FoundationModel
def plan_foundation_model(obj: dict[str, Any], workflows: list[dict[str, Any]], image: str, now: str, log_tail: str = "") -> Plan:
    """The FoundationModel's status and Workflow actions, given its Workflows as found (pure).

    log_tail: the last lines of the failed step's log when the current Workflow failed (the handler reads it)."""
    base = assess_foundation_model(obj)
    if base.phase == "Failed":
        return Plan(base)
    if not image:
        return Plan(_untrained(base))
    try:
        fm = FoundationModel.model_validate(_essence(obj))
    except ValidationError as err:  # assess_foundation_model reports it; unreachable in practice
        return Plan(Verdict("Failed", [Cond(ACCEPTED, "False", "Invalid", str(err))], str(err)))
    meta = obj.get("metadata", {})
    status = obj.get("status") or {}
    generation = int(meta.get("generation") or 1)
    versions: list[dict[str, Any]] = list(status.get("versions") or [])
    latest: str | None = status.get("latestVersion")
    accepted = next(c for c in base.conditions if c.type == ACCEPTED)
    data_revision = str((meta.get("annotations") or {}).get(DATA_REVISION_ANNOTATION) or "")
    current = _current(workflows, {LABEL_GENERATION: str(generation), LABEL_DATA_REVISION: data_revision_label(data_revision)})
    on_data = f", data revision {data_revision}" if data_revision else ""

    def ready(extra_conds: list[Cond]) -> list[Cond]:
        if latest:
            return [accepted, Cond(READY, "True", "VersionAvailable", f"version {latest} is available"), *extra_conds]
        return [accepted, Cond(READY, "False", "NoVersion", "no trained version yet; versions appear in status.versions once a "
                                                            "training Workflow succeeds"), *extra_conds]

    def keep() -> set[str]:
        return {str(v["version"]) for v in versions}

    if current is None:
        if any(_trained(v, generation, data_revision) for v in versions):  # trained; nothing running
            return Plan(Verdict("Ready" if latest else "Failed", ready([]), f"latest version {latest}" if latest else "",
                                {"workflowName": status.get("workflowName"), "progress": status.get("progress")}),
                        delete=_to_delete(workflows, None, keep()))
        version = next_version(versions)
        target = Target(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")), generation, version,
                        data_revision)
        try:
            wf = render_foundation_model(fm, target, image)
        except RenderError as err:
            return Plan(Verdict("Failed", ready([Cond(TRAINING, "False", "CannotRender", str(err))]), str(err)))
        name = _name(wf)
        msg = f"training {version} (spec generation {generation}{on_data}) in Workflow {name}"
        return Plan(Verdict("Training", ready([Cond(TRAINING, "True", "WorkflowSubmitted", msg)]), msg,
                            {"workflowName": name, "progress": "0/0"}), create=wf, delete=_to_delete(workflows, None, keep()))

    name, phase, version = _name(current), _phase(current), _labels(current).get(LABEL_VERSION, "v1")
    if phase not in FINISHED:
        msg = f"training {version} in Workflow {name}: {phase}, {_progress(current)} steps"
        return Plan(Verdict("Training", ready([Cond(TRAINING, "True", "WorkflowRunning", msg)]), msg,
                            {"workflowName": name, "progress": _progress(current)}),
                    delete=_to_delete(workflows, current, keep()))
    if phase != "Succeeded":
        msg = f"training {version} failed in Workflow {name}: {failure(current, log_tail)}"
        return Plan(Verdict("Failed", ready([Cond(TRAINING, "False", "WorkflowFailed", msg)]), msg[:4096],
                            {"workflowName": name, "progress": _progress(current)}),
                    delete=_to_delete(workflows, current, keep()))

    extra_conds: list[Cond] = []
    if not any(v.get("workflow") == name for v in versions):  # record the new version once
        out = _outputs(current)
        data = _parse_json(out.get("data", ""))
        metrics = {k: float(v) for k, v in _parse_json(out.get("metrics", "")).items() if isinstance(v, int | float)}
        tr = fm.spec.training
        settings = {"epochs": float(tr.epochs), "batchSize": float(tr.batchSize), "learningRate": tr.learningRate}
        target = Target(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")), generation, version)
        try:
            artifact, checkpoint = fm_artifacts(fm, target)
        except RenderError as err:
            return Plan(Verdict("Failed", ready([Cond(TRAINING, "False", "CannotRender", str(err))]), str(err)))
        previous = next((v for v in versions if v.get("version") == latest), None)
        passes, comparison = gate(metrics, previous.get("metrics") if previous else None, fm.spec.qualityGate.ndcgTolerance)
        versions.append({"version": version, "artifactUri": artifact, "checkpointUri": checkpoint,
                         "gate": "Passed" if passes else "HeldBack",
                         "dataFingerprint": str(data.get("dataFingerprint", "")), "featureFingerprint": str(data.get("featureFingerprint", "")),
                         "metrics": {**metrics, **settings}, "workflow": name, "specGeneration": generation, "createdAt": now,
                         **({"dataRevision": data_revision} if data_revision else {})})
        if passes:
            latest = version
            extra_conds.append(Cond(QUALITY_GATE, "True", "Passed", f"{version} passed the quality gate: {comparison}"))
        else:
            extra_conds.append(Cond(QUALITY_GATE, "False", "NDCGRegressed",
                                    f"{version} is held back: {comparison} against latest {previous and previous['version']}; "
                                    f"it is recorded in status.versions but latestVersion stays {latest} "
                                    "(raise spec.qualityGate.ndcgTolerance to accept it)"))
        versions = _prune(versions, fm.spec.versionHistoryLimit, latest)
    recorded = next(v for v in versions if v.get("workflow") == name) if any(v.get("workflow") == name for v in versions) else None
    msg = f"trained {version} in Workflow {name}" + (f"; latest version {latest}" if latest else "")
    if recorded and recorded.get("gate") == "HeldBack":
        msg += f"; {version} held back by the quality gate"
    return Plan(Verdict("Ready" if latest else "Failed", ready([Cond(TRAINING, "False", "Succeeded", msg), *extra_conds]), msg,
                        {"workflowName": name, "progress": _progress(current), "versions": versions, "latestVersion": latest}),
                delete=_to_delete(workflows, current, keep()))


# ---------------------------------------------------------------- TaskAdapter
def plan_task_adapter(obj: dict[str, Any], fm: dict[str, Any] | None, workflows: list[dict[str, Any]], image: str, now: str,
                      log_tail: str = "") -> Plan:
    """The TaskAdapter's status and Workflow actions: one adapter version per (spec generation, base FM version)."""
    base = assess_task_adapter(obj, fm)
    base_version = base.extra.get("baseVersion")
    if base_version is None or fm is None:  # invalid, or nothing to fine-tune on yet
        return Plan(base)
    if not image:
        return Plan(_untrained(base))
    try:
        ta = TaskAdapter.model_validate(_essence(obj))
    except ValidationError as err:
        return Plan(Verdict("Failed", [Cond(ACCEPTED, "False", "Invalid", str(err))], str(err)))
    meta = obj.get("metadata", {})
    status = obj.get("status") or {}
    generation = int(meta.get("generation") or 1)
    versions: list[dict[str, Any]] = list(status.get("versions") or [])
    latest: str | None = status.get("latestVersion")
    keep_conds = [c for c in base.conditions if c.type != READY]
    fm_version: dict[str, Any] = next((v for v in (fm.get("status") or {}).get("versions") or [] if v.get("version") == base_version), {})
    current = _current(workflows, {LABEL_GENERATION: str(generation), LABEL_BASE: str(base_version)})
    extra = {"baseVersion": base_version}

    def ready() -> Cond:
        own = [v for v in versions if v.get("foundationModelVersion") == base_version]
        if own:
            return Cond(READY, "True", "VersionAvailable", f"adapter {own[-1]['version']} on {base_version}")
        return Cond(READY, "False", "NoVersion", f"no adapter version trained on {ta.spec.foundationModel.name} {base_version} yet")

    def keep() -> set[str]:
        return {str(v["version"]) for v in versions}

    def target(version: str) -> Target:
        return Target(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")), generation, version)

    if current is None:
        if any(_trained(v, generation) and v.get("foundationModelVersion") == base_version for v in versions):
            return Plan(Verdict("Ready", [*keep_conds, ready()], f"adapter {latest} on {base_version}",
                                {**extra, "workflowName": status.get("workflowName"), "progress": status.get("progress")}),
                        delete=_to_delete(workflows, None, keep()))
        version = next_version(versions)
        try:
            if not fm_version.get("checkpointUri"):
                raise RenderError(f"FoundationModel {ta.spec.foundationModel.name} {base_version} has no checkpointUri: "
                                  "it was not trained by this operator; pin a version it trained")
            wf = render_task_adapter(ta, target(version), str(base_version), str(fm_version["checkpointUri"]), image)
        except RenderError as err:
            return Plan(Verdict("Failed", [*keep_conds, ready(), Cond(TRAINING, "False", "CannotRender", str(err))], str(err), extra))
        name = _name(wf)
        msg = f"fine-tuning {version} on {ta.spec.foundationModel.name} {base_version} in Workflow {name}"
        return Plan(Verdict("Training", [*keep_conds, ready(), Cond(TRAINING, "True", "WorkflowSubmitted", msg)], msg,
                            {**extra, "workflowName": name, "progress": "0/0"}), create=wf, delete=_to_delete(workflows, None, keep()))

    name, phase, version = _name(current), _phase(current), _labels(current).get(LABEL_VERSION, "v1")
    if phase not in FINISHED:
        msg = f"fine-tuning {version} in Workflow {name}: {phase}, {_progress(current)} steps"
        return Plan(Verdict("Training", [*keep_conds, ready(), Cond(TRAINING, "True", "WorkflowRunning", msg)], msg,
                            {**extra, "workflowName": name, "progress": _progress(current)}),
                    delete=_to_delete(workflows, current, keep()))
    if phase != "Succeeded":
        msg = f"fine-tuning {version} failed in Workflow {name}: {failure(current, log_tail)}"
        return Plan(Verdict("Failed", [*keep_conds, ready(), Cond(TRAINING, "False", "WorkflowFailed", msg)], msg[:4096],
                            {**extra, "workflowName": name, "progress": _progress(current)}),
                    delete=_to_delete(workflows, current, keep()))
    if not any(v.get("workflow") == name for v in versions):
        result = _parse_json(_outputs(current).get("metrics", ""))
        after = result.get("fm_plus_adapter") or {}
        before = result.get("frozen_fm") or {}
        metrics = {k: float(v) for k, v in after.items() if isinstance(v, int | float)}
        metrics.update({f"frozen {k}": float(v) for k, v in before.items() if k in ("HR@10", "NDCG@10") and isinstance(v, int | float)})
        for key, label in (("adapter_params", "adapterParams"), ("users", "testUsers")):
            if isinstance(result.get(key), int | float):
                metrics[label] = float(result[key])
        versions.append({"version": version, "foundationModelVersion": base_version, "artifactUri": ta_artifact(target(version)),
                         "metrics": metrics, "workflow": name, "specGeneration": generation, "createdAt": now})
        latest = version
        versions = _prune(versions, ta.spec.versionHistoryLimit, latest)
    msg = f"fine-tuned {version} on {ta.spec.foundationModel.name} {base_version} in Workflow {name}"
    return Plan(Verdict("Ready", [*keep_conds, ready(), Cond(TRAINING, "False", "Succeeded", msg)], msg,
                        {**extra, "workflowName": name, "progress": _progress(current), "versions": versions, "latestVersion": latest}),
                delete=_to_delete(workflows, current, keep()))
