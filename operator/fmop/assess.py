"""What the operator concludes about each object, as pure functions of (object, observations).

No I/O here: handlers read the objects an assessment needs, call these functions and patch the
result once. That keeps every verdict testable without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import ValidationError

from fmop.api import FoundationModel, Rollout, TaskAdapter
from fmop.conditions import Cond, find

ACCEPTED, RESOLVED, READY = "Accepted", "ResolvedRefs", "Ready"
# kstatus (sigs.k8s.io/cli-utils/pkg/kstatus), abnormal-true: the operator is still working toward the spec / nothing
# more happens until a person changes something. Flux's health checks, `kubectl wait` and Argo CD read them.
RECONCILING, STALLED = "Reconciling", "Stalled"
KSTATUS = (RECONCILING, STALLED)


@dataclass(frozen=True)
class Verdict:
    """The status an object should have: its phase, the conditions the operator owns, a summary."""

    phase: str
    conditions: list[Cond]
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- kstatus, for FoundationModels and TaskAdapters
# Both conditions are always present, True or False: kstatus reads an absent one as False, but `kubectl wait
# --for=condition=Stalled=False` and Argo CD's health check need it there to read it. (The Rollout engine sets its own.)
def reconciling(reason: str, message: str) -> list[Cond]:
    """Work under way toward the spec: a training Workflow submitted or running, or a FoundationModel still training
    the version a TaskAdapter waits for."""
    return [Cond(RECONCILING, "True", reason, message), Cond(STALLED, "False", "NotStalled", "")]


def stalled(reason: str, message: str) -> list[Cond]:
    """No progress until a person acts (fixes the spec or a reference, retries a failed Workflow, changes the operator's
    settings): Stalled says what and how, with the reason of the condition that tells the details."""
    return [Cond(RECONCILING, "False", reason, "nothing in flight: see condition Stalled"), Cond(STALLED, "True", reason, message)]


def reconciled() -> list[Cond]:
    """Nothing in flight and nothing waits for a person: the spec is done (Ready says which version serves)."""
    return [Cond(RECONCILING, "False", "Reconciled", "nothing in flight"), Cond(STALLED, "False", "NotStalled", "")]


def with_kstatus(v: Verdict, kstatus: list[Cond]) -> Verdict:
    """`v` with these Reconciling and Stalled conditions (any it had replaced), placed right after Ready, so that
    the order of the conditions does not change with the conditions a plan adds after them."""
    rest = [c for c in v.conditions if c.type not in KSTATUS]
    at = next((i + 1 for i, c in enumerate(rest) if c.type == READY), len(rest))
    return replace(v, conditions=[*rest[:at], *kstatus, *rest[at:]])


FmProgress = Literal["working", "stalled", "settled"]


def foundation_model_progress(fm: dict[str, Any]) -> tuple[FmProgress, dict[str, Any] | None]:
    """Where a FoundationModel stands, as its status says, and its Stalled condition when it is stalled. Not
    reconciled yet, or not for its current generation: working. A status with neither kstatus condition (written by
    an operator older than them, until its next resync) is read from its phase."""
    status: dict[str, Any] = fm.get("status") or {}
    observed, generation = status.get("observedGeneration"), (fm.get("metadata") or {}).get("generation")
    if observed is None or (generation is not None and observed < generation):
        return "working", None
    conditions = list(status.get("conditions") or [])
    stuck, busy = find(conditions, STALLED), find(conditions, RECONCILING)
    if stuck is None and busy is None:
        phase = status.get("phase")
        by_phase: FmProgress = "stalled" if phase == "Failed" else "settled" if phase == "Ready" else "working"
        return by_phase, None
    if stuck is not None and stuck.get("status") == "True":
        return "stalled", stuck
    if busy is not None and busy.get("status") == "True":
        return "working", None
    return "settled", None


def _ref(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind', '?')} {meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _invalid(obj: dict[str, Any], err: ValidationError) -> Verdict:
    """A stored object the current types reject (e.g. the CRD in the cluster is older than the operator)."""
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    msg = f"{_ref(obj)}: {path}: {first['msg']}; fix the field, or upgrade the CRDs to match this operator (make crds / helm upgrade)"
    return _rejected(msg)


def _rejected(msg: str) -> Verdict:
    """The spec is wrong in a way only the operator can see: Accepted=False says where and how to fix it."""
    return Verdict("Failed", [Cond(ACCEPTED, "False", "InvalidSpec", msg),
                              Cond(READY, "False", "InvalidSpec", "see condition Accepted: InvalidSpec")], msg)


def _blocked(accepted: Cond, type_: str, reason: str, msg: str) -> Verdict:
    """Not ready because of condition `type_`; Ready points at it instead of repeating the message."""
    return Verdict("Pending", [accepted, Cond(type_, "False", reason, msg),
                               Cond(READY, "False", reason, f"see condition {type_}: {reason}")], msg)


def _versions(fm: dict[str, Any] | None) -> list[str]:
    return [v.get("version", "") for v in ((fm or {}).get("status") or {}).get("versions", [])]


def _gate(fm: dict[str, Any] | None, version: str) -> str | None:
    entry: dict[str, Any] = next((v for v in ((fm or {}).get("status") or {}).get("versions", []) if v.get("version") == version), {})
    return entry.get("gate")


def assess_foundation_model(obj: dict[str, Any]) -> Verdict:
    try:
        fm = FoundationModel.model_validate(_essence(obj))
    except ValidationError as err:
        return _stalled_on(_invalid(obj, err), ACCEPTED)
    spec = fm.spec
    problems: list[str] = []
    context = set(spec.data.featureSchema.contextFields)
    for f in ("device", "page", "locale"):
        if f in spec.architecture.eventFields and f not in context:
            problems.append(
                f"spec.architecture.eventFields lists {f} but spec.data.featureSchema.contextFields does not; "
                f"add {f} to contextFields or remove it from eventFields"
            )
    if "genre" in {o.type for o in spec.objectives} and spec.data.source in ("parquet", "csv") and not spec.data.itemMetadataUri:
        problems.append("objective genre needs item metadata: set spec.data.itemMetadataUri or drop the genre objective")
    if problems:
        msg = "; ".join(problems)
        return _stalled_on(_rejected(msg), ACCEPTED)

    versions = _versions(obj)
    accepted = Cond(ACCEPTED, "True", "SpecValid", "spec is valid")
    if versions:
        latest = (obj.get("status") or {}).get("latestVersion") or versions[-1]
        return Verdict("Ready", [accepted, Cond(READY, "True", "VersionAvailable", f"version {latest} is available"), *reconciled()],
                       f"latest version {latest}")
    msg = "no trained version yet; versions appear in status.versions once a training Workflow succeeds"
    return Verdict("Pending", [accepted, Cond(READY, "False", "NoVersion", msg), *reconciling("NoVersion", msg)], msg)


def assess_task_adapter(obj: dict[str, Any], fm: dict[str, Any] | None) -> Verdict:
    try:
        ta = TaskAdapter.model_validate(_essence(obj))
    except ValidationError as err:
        return _stalled_on(_invalid(obj, err), ACCEPTED)
    ref = ta.spec.foundationModel
    ns = obj.get("metadata", {}).get("namespace", "?")
    accepted = Cond(ACCEPTED, "True", "SpecValid", "spec is valid")
    if fm is None:
        msg = f"spec.foundationModel.name: FoundationModel {ns}/{ref.name} does not exist; create it or fix the name"
        return _stalled_on(_blocked(accepted, RESOLVED, "FoundationModelNotFound", msg), RESOLVED)
    known = _versions(fm)
    if ref.versionPolicy == "Pinned" and ref.version not in known:
        msg = (f"spec.foundationModel.version: FoundationModel {ns}/{ref.name} has no version {ref.version} "
               f"(known: {', '.join(known) or 'none yet'}); pick a listed version or wait for training")
        return _waiting_for(_blocked(accepted, RESOLVED, "VersionNotFound", msg), fm, f"{ns}/{ref.name}", until_settled=True)
    if not known:
        msg = f"waiting for FoundationModel {ns}/{ref.name} to finish its first version"
        return _waiting_for(_blocked(accepted, RESOLVED, "FoundationModelNotReady", msg), fm, f"{ns}/{ref.name}", until_settled=False)
    base = ref.version if ref.versionPolicy == "Pinned" else ((fm.get("status") or {}).get("latestVersion") or known[-1])
    resolved = Cond(RESOLVED, "True", "Resolved", f"base FoundationModel {ref.name} {base}")
    own = [v for v in ((obj.get("status") or {}).get("versions") or []) if v.get("foundationModelVersion") == base]
    if own:
        return Verdict("Ready", [accepted, resolved, Cond(READY, "True", "VersionAvailable", f"adapter {own[-1]['version']} on {base}"),
                                 *reconciled()], "", {"baseVersion": base})
    msg = f"no adapter version trained on {ref.name} {base} yet"
    return Verdict("Pending", [accepted, resolved, Cond(READY, "False", "NoVersion", msg), *reconciling("NoVersion", msg)], msg,
                   {"baseVersion": base})


def _stalled_on(v: Verdict, type_: str) -> Verdict:
    """`v` stalled on its condition `type_` (False), with that condition's reason and message."""
    cause = next(c for c in v.conditions if c.type == type_)
    return with_kstatus(v, stalled(cause.reason, cause.message))


def _waiting_for(v: Verdict, fm: dict[str, Any], name: str, *, until_settled: bool) -> Verdict:
    """A TaskAdapter blocked on its FoundationModel (v's ResolvedRefs says how): Reconciling while the FoundationModel
    works (trains, or has not seen its latest spec yet); Stalled when it is stalled itself, or (until_settled: the
    version may come from a training yet to run) when it is done and still lacks what the adapter needs."""
    cause = next(c for c in v.conditions if c.type == RESOLVED)
    progress, why = foundation_model_progress(fm)
    if progress == "stalled":
        said = f": {why.get('reason')}: {str(why.get('message', ''))[:1024]}" if why is not None else " (phase Failed)"
        return with_kstatus(v, stalled("FoundationModelStalled", f"{cause.message}, but it is stalled{said}"))
    if progress == "settled" and until_settled:
        return with_kstatus(v, stalled(cause.reason, f"{cause.message}; FoundationModel {name} is not training, so no new "
                                                     "version comes until it is changed"))
    return with_kstatus(v, reconciling(cause.reason, cause.message))


def follow_latest(obj: dict[str, Any], fm: dict[str, Any] | None, adapters: dict[str, dict[str, Any] | None]) -> tuple[str | None, str]:
    """For a Rollout with model.foundationModel.versionPolicy FollowLatest: (the version to serve, a note).

    The version is the newest one the quality gate did not hold back (unless allowHeldBack) for which
    every adapter in model.adapters has a version (its pinned one, when it names one): the bundle is
    served whole or not at all. The note names what newer versions wait for ("" when nothing waits);
    None when no version has a complete bundle yet."""
    model = (obj.get("spec") or {}).get("model") or {}
    target = model.get("foundationModel") or {}
    wanted = model.get("adapters") or []
    waiting: list[str] = []
    for entry in reversed(((fm or {}).get("status") or {}).get("versions") or []):
        version = str(entry.get("version", ""))
        if entry.get("gate") == "HeldBack" and not target.get("allowHeldBack"):
            continue
        missing = []
        for a in wanted:
            have = [v for v in (((adapters.get(a.get("name", "")) or {}).get("status") or {}).get("versions") or [])
                    if v.get("foundationModelVersion") == version and (not a.get("version") or v.get("version") == a["version"])]
            if not have:
                missing.append(str(a.get("name")))
        if not missing:
            return version, "; ".join(waiting)
        waiting.append(f"{version} waits for adapter(s) {', '.join(missing)} to train on it")
    return None, "; ".join(waiting) or f"FoundationModel {target.get('name')} has no version that passed its quality gate yet"


def with_version(obj: dict[str, Any], version: str) -> dict[str, Any]:
    """The Rollout as if its spec named `version` (what FollowLatest resolved to), for checks and the engine."""
    spec = dict(obj.get("spec") or {})
    model = dict(spec.get("model") or {})
    model["foundationModel"] = {**(model.get("foundationModel") or {}), "version": version}
    return {**obj, "spec": {**spec, "model": model}}


def assess_rollout(obj: dict[str, Any], fm: dict[str, Any] | None, adapters: dict[str, dict[str, Any] | None]) -> Verdict:
    try:
        ro = Rollout.model_validate(_essence(obj))
    except ValidationError as err:
        return _invalid(obj, err)
    ns = obj.get("metadata", {}).get("namespace", "?")
    target = ro.spec.model.foundationModel

    # Things the schema cannot see: adapters must be trained on the FoundationModel being served.
    wrong_base = [
        f"spec.model.adapters: TaskAdapter {a.name} is trained on FoundationModel {body['spec']['foundationModel']['name']}, "
        f"not {target.name}; remove it or serve its FoundationModel"
        for a in ro.spec.model.adapters
        if (body := adapters.get(a.name)) is not None and body["spec"]["foundationModel"]["name"] != target.name
    ]
    if wrong_base:
        msg = "; ".join(wrong_base)
        return _rejected(msg)
    accepted = Cond(ACCEPTED, "True", "SpecValid", "spec is valid")

    if target.versionPolicy == "FollowLatest" and target.version is None and fm is not None:
        version, note = follow_latest(obj, fm, adapters)
        if version is None:
            return _blocked(accepted, RESOLVED, "NoCompleteBundle",
                            f"spec.model.foundationModel (versionPolicy FollowLatest): no version of FoundationModel {ns}/{target.name} "
                            f"can be served with all of model.adapters yet: {note}")
        return _following(assess_rollout(with_version(obj, version), fm, adapters), version, note)

    missing: list[tuple[str, str]] = []
    if fm is None:
        missing.append(("FoundationModelNotFound", f"spec.model.foundationModel.name: FoundationModel {ns}/{target.name} does not exist; create it or fix the name"))
    elif target.version not in (known := _versions(fm)):
        missing.append(("VersionNotFound", f"spec.model.foundationModel.version: FoundationModel {ns}/{target.name} has no version {target.version} "
                                            f"(known: {', '.join(known) or 'none yet'}); pick a listed version or wait for training"))
    elif _gate(fm, target.version) == "HeldBack" and not target.allowHeldBack:
        passed = [v for v in known if _gate(fm, v) != "HeldBack"]
        missing.append(("VersionHeldBack", f"spec.model.foundationModel.version: version {target.version} of FoundationModel {ns}/{target.name} "
                                            f"was held back by its quality gate (see its QualityGate condition); serve a version that passed "
                                            f"({', '.join(passed) or 'none yet'}) or set spec.model.foundationModel.allowHeldBack: true"))
    for i, a in enumerate(ro.spec.model.adapters):
        body = adapters.get(a.name)
        if body is None:
            missing.append(("AdapterNotFound", f"spec.model.adapters[{i}].name: TaskAdapter {ns}/{a.name} does not exist; create it or remove it from the list"))
            continue
        valid = [v for v in ((body.get("status") or {}).get("versions") or []) if v.get("foundationModelVersion") == target.version]
        names = [v.get("version") for v in valid]
        if (a.version and a.version not in names) or not valid:
            want = f"version {a.version}" if a.version else "version"
            missing.append(("AdapterVersionNotFound", f"spec.model.adapters[{i}]: TaskAdapter {ns}/{a.name} has no {want} trained on "
                                                      f"{target.name} {target.version} (valid: {', '.join(names) or 'none yet'}); "
                                                      "wait for it to train or serve another FoundationModel version"))
    if missing:
        reason = missing[0][0]
        msg = "; ".join(m for _, m in missing)
        return _blocked(accepted, RESOLVED, reason, msg)
    resolved = Cond(RESOLVED, "True", "Resolved", f"serving {target.name} {target.version} with {len(ro.spec.model.adapters)} adapter(s)")
    msg = "references resolved; waiting for the rollout engine to create the InferenceServices"
    return Verdict("Pending", [accepted, resolved, Cond(READY, "False", "NotServing", msg)], msg)


def _following(v: Verdict, version: str, note: str) -> Verdict:
    """A FollowLatest Rollout's verdict on the version it resolved to, saying so (and what newer versions
    wait for); extra["version"] is that version, for the controller to serve."""
    said = f"following the latest version: {version}" + (f" ({note})" if note else "")
    conds = [replace(c, message=f"{c.message}; {said}") if c.type == RESOLVED and c.status == "True" else c for c in v.conditions]
    return replace(v, conditions=conds, extra={**v.extra, "version": version})


def _essence(obj: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored object the API types describe (metadata kept opaque)."""
    return {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in obj and obj[k] is not None}
