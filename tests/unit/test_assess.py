"""Verdicts for each kind, case by case, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from fmop.assess import assess_foundation_model, assess_rollout, assess_task_adapter
from tests.conftest import load_example


def _ns(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["namespace"] = "ns"
    return obj


def fm(versions: tuple[str, ...] = ()) -> dict[str, Any]:
    obj = _ns(load_example("foundationmodel.yaml"))
    if versions:
        obj["status"] = {"latestVersion": versions[-1], "versions": [{"version": v, "artifactUri": f"s3://m/{v}"} for v in versions]}
    return obj


def ta(adapter_versions: tuple[tuple[str, str], ...] = (), **ref: Any) -> dict[str, Any]:
    obj = _ns(load_example("taskadapter.yaml"))
    obj["spec"]["foundationModel"].update(ref)
    if adapter_versions:
        obj["status"] = {"versions": [{"version": v, "foundationModelVersion": b, "artifactUri": "s3://a"} for v, b in adapter_versions]}
    return obj


def conds(verdict: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in verdict.conditions}


def test_fm_without_versions_is_pending() -> None:
    v = assess_foundation_model(fm())
    assert v.phase == "Pending" and conds(v)["Ready"] == ("False", "NoVersion")


def test_fm_with_version_is_ready() -> None:
    v = assess_foundation_model(fm(("v1", "v2")))
    assert v.phase == "Ready" and conds(v)["Ready"] == ("True", "VersionAvailable") and "v2" in v.message


def test_fm_context_event_field_needs_context_column() -> None:
    obj = fm()
    obj["spec"]["architecture"]["eventFields"] = ["item", "device"]
    v = assess_foundation_model(obj)
    assert v.phase == "Failed" and conds(v)["Accepted"] == ("False", "InvalidSpec")
    assert "spec.data.featureSchema.contextFields" in v.message


def test_fm_spec_the_types_reject_is_reported_not_raised() -> None:
    obj = fm()
    obj["spec"]["architecture"]["layers"] = "two"
    v = assess_foundation_model(obj)
    assert v.phase == "Failed" and "spec.architecture.layers" in v.message and "upgrade the CRDs" in v.message


@pytest.mark.parametrize(
    ("adapter", "model", "phase", "resolved", "ready"),
    [
        pytest.param(ta(), None, "Pending", ("False", "FoundationModelNotFound"), ("False", "FoundationModelNotFound"), id="fm-missing"),
        pytest.param(ta(), fm(), "Pending", ("False", "FoundationModelNotReady"), ("False", "FoundationModelNotReady"), id="fm-untrained"),
        pytest.param(ta(version="v3", versionPolicy="Pinned"), fm(("v1",)), "Pending", ("False", "VersionNotFound"), ("False", "VersionNotFound"), id="pinned-unknown"),
        pytest.param(ta(version="v1", versionPolicy="Pinned"), fm(("v1", "v2")), "Pending", ("True", "Resolved"), ("False", "NoVersion"), id="pinned-known-untrained"),
        pytest.param(ta((("v1", "v2"),)), fm(("v1", "v2")), "Ready", ("True", "Resolved"), ("True", "VersionAvailable"), id="follow-latest-trained"),
        pytest.param(ta((("v1", "v1"),)), fm(("v1", "v2")), "Pending", ("True", "Resolved"), ("False", "NoVersion"), id="follow-latest-stale"),
    ],
)
def test_task_adapter(adapter: dict[str, Any], model: dict[str, Any] | None, phase: str, resolved: tuple[str, str], ready: tuple[str, str]) -> None:
    v = assess_task_adapter(adapter, model)
    assert v.phase == phase
    assert conds(v)["ResolvedRefs"] == resolved
    assert conds(v)["Ready"] == ready


def test_task_adapter_pinned_unknown_lists_known_versions() -> None:
    v = assess_task_adapter(ta(version="v3", versionPolicy="Pinned"), fm(("v1", "v2")))
    assert "known: v1, v2" in v.message and "spec.foundationModel.version" in v.message


def test_rollout_missing_everything_names_each_field() -> None:
    v = assess_rollout(_ns(load_example("rollout.yaml")), None, {"west-coast": None})
    assert conds(v)["ResolvedRefs"] == ("False", "FoundationModelNotFound")
    assert "spec.model.foundationModel.name" in v.message and "spec.model.adapters[0].name" in v.message


def test_rollout_resolves_when_fm_and_adapter_versions_exist() -> None:
    v = assess_rollout(_ns(load_example("rollout.yaml")), fm(("v1",)), {"west-coast": ta((("v1", "v1"),))})
    assert conds(v)["ResolvedRefs"] == ("True", "Resolved") and conds(v)["Accepted"][0] == "True"


def test_rollout_pinned_adapter_version_must_match_fm_version() -> None:
    ro = _ns(load_example("rollout.yaml"))
    ro["spec"]["model"]["adapters"][0]["version"] = "v2"
    v = assess_rollout(ro, fm(("v1",)), {"west-coast": ta((("v1", "v1"),))})
    assert conds(v)["ResolvedRefs"] == ("False", "AdapterVersionNotFound")
    assert "has no version v2 trained on movielens v1 (valid: v1)" in v.message


def test_rollout_adapter_of_other_model_is_invalid() -> None:
    other = ta()
    other["spec"]["foundationModel"]["name"] = "other"
    v = assess_rollout(_ns(load_example("rollout.yaml")), fm(("v1",)), {"west-coast": other})
    assert v.phase == "Failed" and conds(v)["Accepted"] == ("False", "InvalidSpec")


def _held_back(versions: tuple[str, ...], held: str) -> dict[str, Any]:
    obj = fm(versions)
    for v in obj["status"]["versions"]:
        v["gate"] = "HeldBack" if v["version"] == held else "Passed"
    return obj


def test_rollout_refuses_a_version_the_quality_gate_held_back() -> None:
    ro = _ns(load_example("rollout.yaml"))
    ro["spec"]["model"]["foundationModel"]["version"] = "v2"
    v = assess_rollout(ro, _held_back(("v1", "v2"), "v2"), {"west-coast": ta((("v1", "v2"),))})
    assert conds(v)["ResolvedRefs"] == ("False", "VersionHeldBack")
    assert "version v2 of FoundationModel ns/movielens was held back" in v.message
    assert "(v1)" in v.message and "allowHeldBack: true" in v.message


def test_rollout_may_opt_in_to_a_held_back_version() -> None:
    ro = _ns(load_example("rollout.yaml"))
    ro["spec"]["model"]["foundationModel"].update(version="v2", allowHeldBack=True)
    v = assess_rollout(ro, _held_back(("v1", "v2"), "v2"), {"west-coast": ta((("v1", "v2"),))})
    assert conds(v)["ResolvedRefs"] == ("True", "Resolved")


def test_rollout_serves_a_version_recorded_without_a_gate() -> None:
    ro = _ns(load_example("rollout.yaml"))
    v = assess_rollout(ro, fm(("v1",)), {"west-coast": ta((("v1", "v1"),))})  # no gate field: recorded by hand
    assert conds(v)["ResolvedRefs"] == ("True", "Resolved")


def _following_rollout() -> dict[str, Any]:
    ro = _ns(load_example("rollout.yaml"))
    ro["spec"]["model"]["foundationModel"] = {"name": "movielens", "versionPolicy": "FollowLatest"}
    return ro


def test_follow_latest_serves_the_newest_version_every_adapter_has_trained_on() -> None:
    from fmop.assess import follow_latest
    ro = _following_rollout()
    fms = _held_back(("v1", "v2", "v3", "v4"), "v4")  # v4 held back by the gate
    adapter = ta((("v1", "v1"), ("v2", "v2")))  # the adapter has not trained on v3 yet
    assert follow_latest(ro, fms, {"west-coast": adapter}) == ("v2", "v3 waits for adapter(s) west-coast to train on it")
    v = assess_rollout(ro, fms, {"west-coast": adapter})
    assert conds(v)["ResolvedRefs"] == ("True", "Resolved")
    resolved = next(c for c in v.conditions if c.type == "ResolvedRefs")
    assert "serving movielens v2" in resolved.message and "following the latest version: v2 (v3 waits for adapter(s) west-coast" in resolved.message
    adapter = ta((("v1", "v1"), ("v2", "v2"), ("v3", "v3")))
    assert follow_latest(ro, fms, {"west-coast": adapter}) == ("v3", "")
    ro["spec"]["model"]["foundationModel"]["allowHeldBack"] = True
    assert follow_latest(ro, fms, {"west-coast": ta((("v4", "v4"),))}) == ("v4", "")


def test_follow_latest_without_a_complete_bundle_is_blocked_and_says_why() -> None:
    v = assess_rollout(_following_rollout(), fm(("v1",)), {"west-coast": ta()})
    assert conds(v)["ResolvedRefs"] == ("False", "NoCompleteBundle")
    assert "v1 waits for adapter(s) west-coast to train on it" in v.message
    v = assess_rollout(_following_rollout(), fm(), {"west-coast": ta()})
    assert conds(v)["ResolvedRefs"] == ("False", "NoCompleteBundle") and "no version that passed its quality gate yet" in v.message


def test_follow_latest_honours_a_pinned_adapter_version() -> None:
    from fmop.assess import follow_latest
    ro = _following_rollout()
    ro["spec"]["model"]["adapters"][0]["version"] = "a1"
    adapter = ta((("a1", "v1"), ("a2", "v2")))
    assert follow_latest(ro, fm(("v1", "v2")), {"west-coast": adapter})[0] == "v1"


# ---------------------------------------------------------------- kstatus: Reconciling and Stalled (FoundationModel, TaskAdapter)
def kstatus(verdict: Any) -> tuple[tuple[str, str], tuple[str, str]]:
    """(Reconciling, Stalled) as (status, reason); both are always there."""
    c = conds(verdict)
    return c["Reconciling"], c["Stalled"]


def fm_as(phase: str | None = None, generation: int = 1, observed: int | None = 1, versions: tuple[str, ...] = (),
          reconciling: str | None = None, stalled: tuple[str, str] | None = None) -> dict[str, Any]:
    """A FoundationModel as its status says it stands (what a TaskAdapter's verdict reads of it)."""
    obj = fm(versions)
    obj["metadata"]["generation"] = generation
    status = obj.setdefault("status", {})
    if observed is not None:
        status["observedGeneration"] = observed
    if phase is not None:
        status["phase"] = phase
    conditions = []
    if reconciling is not None:
        conditions.append({"type": "Reconciling", "status": reconciling, "reason": "WorkflowRunning", "message": "training v1"})
    if stalled is not None:
        conditions.append({"type": "Stalled", "status": stalled[0], "reason": stalled[1], "message": f"training v1 failed: {stalled[1]}"})
    status["conditions"] = conditions
    return obj


def test_fm_kstatus_invalid_spec_is_stalled() -> None:
    obj = fm()
    obj["spec"]["architecture"]["eventFields"] = ["item", "device"]
    v = assess_foundation_model(obj)
    assert kstatus(v) == (("False", "InvalidSpec"), ("True", "InvalidSpec"))
    stalled = next(c for c in v.conditions if c.type == "Stalled")
    assert stalled.message == next(c for c in v.conditions if c.type == "Accepted").message


def test_fm_kstatus_a_spec_the_types_reject_is_stalled() -> None:
    obj = fm()
    obj["spec"]["architecture"]["layers"] = "two"
    assert kstatus(assess_foundation_model(obj)) == (("False", "InvalidSpec"), ("True", "InvalidSpec"))


@pytest.mark.parametrize(("model", "expected"), [
    pytest.param(fm(), (("True", "NoVersion"), ("False", "NotStalled")), id="no-version-yet-works-toward-one"),
    pytest.param(fm(("v1",)), (("False", "Reconciled"), ("False", "NotStalled")), id="version-available-is-done"),
])
def test_fm_kstatus_valid(model: dict[str, Any], expected: Any) -> None:
    assert kstatus(assess_foundation_model(model)) == expected


@pytest.mark.parametrize(("adapter", "model", "expected"), [
    pytest.param(ta(), None, (("False", "FoundationModelNotFound"), ("True", "FoundationModelNotFound")), id="fm-missing-stalls"),
    pytest.param(ta(), fm_as("Training", reconciling="True", stalled=("False", "NotStalled")),
                 (("True", "FoundationModelNotReady"), ("False", "NotStalled")), id="fm-training-its-first-version-reconciles"),
    pytest.param(ta(), fm_as(observed=None), (("True", "FoundationModelNotReady"), ("False", "NotStalled")), id="fm-not-reconciled-yet-reconciles"),
    pytest.param(ta(), fm_as("Failed", reconciling="False", stalled=("True", "WorkflowFailed")),
                 (("False", "FoundationModelStalled"), ("True", "FoundationModelStalled")), id="fm-failed-its-first-version-stalls"),
    pytest.param(ta(), fm_as("Pending", reconciling="False", stalled=("True", "NoTrainerImage")),
                 (("False", "FoundationModelStalled"), ("True", "FoundationModelStalled")), id="fm-without-trainer-stalls"),
    pytest.param(ta(), fm_as("Failed"), (("False", "FoundationModelStalled"), ("True", "FoundationModelStalled")),
                 id="fm-failed-by-an-older-operator-stalls"),
    pytest.param(ta(version="v3", versionPolicy="Pinned"), fm_as("Training", versions=("v1", "v2"), reconciling="True", stalled=("False", "NotStalled")),
                 (("True", "VersionNotFound"), ("False", "NotStalled")), id="pinned-version-may-come-from-the-training-fm"),
    pytest.param(ta(version="v3", versionPolicy="Pinned"), fm_as("Ready", generation=2, observed=1, versions=("v1", "v2")),
                 (("True", "VersionNotFound"), ("False", "NotStalled")), id="pinned-version-may-come-from-an-fm-edit-not-seen-yet"),
    pytest.param(ta(version="v3", versionPolicy="Pinned"), fm_as("Ready", versions=("v1", "v2"), reconciling="False", stalled=("False", "NotStalled")),
                 (("False", "VersionNotFound"), ("True", "VersionNotFound")), id="pinned-version-an-idle-fm-lacks-stalls"),
    pytest.param(ta(version="v3", versionPolicy="Pinned"), fm_as("Failed", versions=("v1", "v2"), reconciling="False", stalled=("True", "WorkflowFailed")),
                 (("False", "FoundationModelStalled"), ("True", "FoundationModelStalled")), id="pinned-version-a-stalled-fm-lacks-stalls"),
    pytest.param(ta(version="v1", versionPolicy="Pinned"), fm(("v1", "v2")), (("True", "NoVersion"), ("False", "NotStalled")),
                 id="resolved-no-adapter-version-yet-reconciles"),
    pytest.param(ta((("v1", "v2"),)), fm(("v1", "v2")), (("False", "Reconciled"), ("False", "NotStalled")), id="adapter-version-available-is-done"),
])
def test_task_adapter_kstatus(adapter: dict[str, Any], model: dict[str, Any] | None, expected: Any) -> None:
    v = assess_task_adapter(adapter, model)
    assert kstatus(v) == expected
    assert [c.type for c in v.conditions].count("Stalled") == 1 and [c.type for c in v.conditions].count("Reconciling") == 1


def test_task_adapter_stalled_on_its_foundation_model_says_why() -> None:
    v = assess_task_adapter(ta(), fm_as("Failed", reconciling="False", stalled=("True", "WorkflowFailed")))
    stalled = next(c for c in v.conditions if c.type == "Stalled")
    assert conds(v)["ResolvedRefs"] == ("False", "FoundationModelNotReady"), "ResolvedRefs keeps its reason"
    assert stalled.message == ("waiting for FoundationModel ns/movielens to finish its first version, but it is stalled: "
                               "WorkflowFailed: training v1 failed: WorkflowFailed")
    missing = next(c for c in assess_task_adapter(ta(), None).conditions if c.type == "Stalled")
    assert "FoundationModel ns/movielens does not exist; create it or fix the name" in missing.message


def test_rollout_verdicts_carry_no_kstatus_conditions() -> None:
    """The Rollout engine sets Reconciling and Stalled itself, from the whole rollout: the reference check leaves them out."""
    for v in (assess_rollout(_ns(load_example("rollout.yaml")), None, {"west-coast": None}),
              assess_rollout(_ns(load_example("rollout.yaml")), fm(("v1",)), {"west-coast": ta((("v1", "v1"),))})):
        assert not {"Reconciling", "Stalled"} & set(conds(v))
