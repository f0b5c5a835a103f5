"""The operator, as a real process, against the real control plane."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import load_example
from tests.integration.helpers import (
    GROUP,
    VERSION,
    OperatorProcess,
    condition,
    get,
    running_operator,
    wait_condition,
    wait_for,
)

PLURALS = {"FoundationModel": "foundationmodels", "TaskAdapter": "taskadapters", "Rollout": "rollouts"}


@pytest.fixture(scope="module")
def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with running_operator(cluster.kubeconfig_path, tmp_path_factory.mktemp("op") / "operator.log") as op:
        yield op


def apply(api: Any, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj)
    return created


def patch_status(api: Any, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Write status the way the training controller will when a Workflow finishes."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": status})


def events_for(api: Any, namespace: str, name: str) -> list[Any]:
    items = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return list(items)


def test_operator_sets_conditions_and_events_on_examples(api: Any, namespace: str, operator: OperatorProcess) -> None:
    for name in ("foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml"):
        apply(api, namespace, load_example(name))

    fm = wait_condition(api, "foundationmodels", namespace, "movielens", "Ready", "False", "NoVersion")
    assert "no trained version yet" in fm["message"]
    wait_condition(api, "foundationmodels", namespace, "movielens", "Accepted", "True", "SpecValid")
    wait_condition(api, "taskadapters", namespace, "west-coast", "ResolvedRefs", "False", "FoundationModelNotReady")
    ro = wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "False", "VersionNotFound")
    assert "spec.model.foundationModel.version" in ro["message"] and "has no version v1" in ro["message"]

    obj = get(api, "rollouts", namespace, "recommender")
    assert obj["status"]["phase"] == "Pending"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # Events are posted for each object, with the condition's reason.
    reasons = wait_for(lambda: {e.reason for e in events_for(api, namespace, "recommender")} >= {"SpecValid", "VersionNotFound"} or None,
                       30, "Events on the Rollout")
    assert reasons


def test_references_resolve_when_versions_appear(api: Any, namespace: str, operator: OperatorProcess) -> None:
    for name in ("foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml"):
        apply(api, namespace, load_example(name))
    wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "False", "VersionNotFound")

    patch_status(api, "foundationmodels", namespace, "movielens", {
        "latestVersion": "v1",
        "versions": [{"version": "v1", "artifactUri": "s3://models/foundation/movielens/v1/", "metrics": {"ndcg@10": 0.1}}],
    })
    wait_condition(api, "foundationmodels", namespace, "movielens", "Ready", "True", "VersionAvailable")
    wait_condition(api, "taskadapters", namespace, "west-coast", "ResolvedRefs", "True")
    assert wait_for(lambda: get(api, "taskadapters", namespace, "west-coast")["status"].get("baseVersion"), 30) == "v1"
    # The FM is there, the adapter has no version for v1 yet: the Rollout says exactly that.
    ro = wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "False", "AdapterVersionNotFound")
    assert "spec.model.adapters[0]" in ro["message"]

    patch_status(api, "taskadapters", namespace, "west-coast", {
        "latestVersion": "v1",
        "versions": [{"version": "v1", "foundationModelVersion": "v1", "artifactUri": "s3://models/adapters/west-coast/v1/"}],
    })
    wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "True", "Resolved")
    wait_condition(api, "taskadapters", namespace, "west-coast", "Ready", "True", "VersionAvailable")


def test_missing_foundation_model_is_named(api: Any, namespace: str, operator: OperatorProcess) -> None:
    ta = load_example("taskadapter.yaml")
    ta["spec"]["foundationModel"]["name"] = "does-not-exist"
    apply(api, namespace, ta)
    c = wait_condition(api, "taskadapters", namespace, "west-coast", "ResolvedRefs", "False", "FoundationModelNotFound")
    assert f"FoundationModel {namespace}/does-not-exist does not exist" in c["message"]
    assert "spec.foundationModel.name" in c["message"]


def test_rollout_rejects_adapter_trained_on_another_model(api: Any, namespace: str, operator: OperatorProcess) -> None:
    apply(api, namespace, load_example("foundationmodel.yaml"))
    other = load_example("foundationmodel.yaml")
    other["metadata"]["name"] = "other"
    apply(api, namespace, other)
    ta = load_example("taskadapter.yaml")
    ta["spec"]["foundationModel"]["name"] = "other"
    apply(api, namespace, ta)
    apply(api, namespace, load_example("rollout.yaml"))
    c = wait_condition(api, "rollouts", namespace, "recommender", "Accepted", "False", "InvalidSpec")
    assert "TaskAdapter west-coast is trained on FoundationModel other, not movielens" in c["message"]
    assert get(api, "rollouts", namespace, "recommender")["status"]["phase"] == "Failed"


def test_nothing_is_written_when_nothing_changes(api: Any, namespace: str, operator: OperatorProcess) -> None:
    apply(api, namespace, load_example("foundationmodel.yaml"))
    wait_condition(api, "foundationmodels", namespace, "movielens", "Ready", "False", "NoVersion")
    before = get(api, "foundationmodels", namespace, "movielens")
    time.sleep(4 * operator.resync)  # several resync ticks
    after = get(api, "foundationmodels", namespace, "movielens")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_metrics_count_reconciles(api: Any, namespace: str, operator: OperatorProcess) -> None:
    apply(api, namespace, load_example("foundationmodel.yaml"))
    wait_condition(api, "foundationmodels", namespace, "movielens", "Accepted", "True")

    def count() -> float | None:
        m = re.search(r'^fmop_reconcile_total\{kind="FoundationModel",result="changed"\} ([0-9.]+)$', operator.metrics(), re.M)
        return float(m.group(1)) if m and float(m.group(1)) >= 1 else None

    assert wait_for(count, 30, "reconcile counter") >= 1
    assert "fmop_reconcile_duration_seconds_bucket" in operator.metrics()


def test_garbage_collector_cascades_owned_objects(api: Any, namespace: str) -> None:
    """Objects the operator will own (Workflows, InferenceServices, routes) go when their owner goes:
    the real kube-controller-manager's garbage collector runs in the local control plane."""
    fm = apply(api, namespace, load_example("foundationmodel.yaml"))
    core = client.CoreV1Api(api)
    owner = client.V1OwnerReference(api_version=f"{GROUP}/{VERSION}", kind="FoundationModel", name=fm["metadata"]["name"],
                                    uid=fm["metadata"]["uid"], controller=True, block_owner_deletion=True)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owned", owner_references=[owner]), data={"k": "v"}))
    client.CustomObjectsApi(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, "foundationmodels", "movielens")

    def gone() -> bool:
        return not [c for c in core.list_namespaced_config_map(namespace).items if c.metadata.name == "owned"]

    wait_for(gone, 60, "garbage collection of the owned ConfigMap")


def test_kubectl_get_short_names_show_the_columns(api: Any, namespace: str, cluster: Any, operator: OperatorProcess) -> None:
    for name in ("foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml"):
        apply(api, namespace, load_example(name))
    wait_condition(api, "rollouts", namespace, "recommender", "Ready", "False")
    wait_condition(api, "taskadapters", namespace, "west-coast", "Ready", "False")

    out = cluster.kubectl("get", "fm,ta,fmro", "-n", namespace).stdout
    assert re.search(r"^NAME\s+PHASE\s+LATEST\s+DATA\s+AGE$", out, re.M), out
    assert re.search(r"^foundationmodel\.fmops\.dev/movielens\s+Pending\s+movielens100k\s+\S+$", out, re.M), out
    assert re.search(r"^NAME\s+PHASE\s+TASK\s+MODEL\s+BASE\s+LATEST\s+AGE$", out, re.M), out
    assert re.search(r"^taskadapter\.fmops\.dev/west-coast\s+Pending\s+west-coast\s+movielens\s+\S+$", out, re.M), out
    assert re.search(r"^NAME\s+PHASE\s+STEP\s+WEIGHT\s+STABLE\s+CANARY\s+AGE$", out, re.M), out
    assert re.search(r"^rollout\.fmops\.dev/recommender\s+Pending\s+0\s+\S+$", out, re.M), out

    everything = cluster.kubectl("get", "fmops", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(everything) == ["foundationmodel.fmops.dev/movielens", "rollout.fmops.dev/recommender", "taskadapter.fmops.dev/west-coast"]
    wide = cluster.kubectl("get", "fmro", "-n", namespace, "-o", "wide").stdout
    assert "PROVIDER" in wide and "gatewayAPI" in wide


def _ro_status(api: Any, namespace: str) -> dict[str, Any]:
    return dict(get(api, "rollouts", namespace, "recommender").get("status") or {})


def test_a_rollout_moves_fm_and_adapters_as_one_bundle_and_only_to_gated_versions(
        api: Any, namespace: str, operator: OperatorProcess) -> None:
    """Issue #8: a Rollout serving FM + adapters moves to a new FM version only once every adapter has
    a version for it, and never to a version the quality gate held back (unless it opts in)."""
    fm_v1 = {"version": "v1", "artifactUri": "s3://models/foundation/movielens/v1/", "gate": "Passed", "metrics": {"ndcg@10": 0.1}}
    ta_v1 = {"version": "v1", "foundationModelVersion": "v1", "artifactUri": "s3://models/adapters/west-coast/v1/"}
    ta = load_example("taskadapter.yaml")
    ta["spec"]["foundationModel"].update(versionPolicy="Pinned", version="v1")  # no fine-tuning Workflow: versions by hand
    for obj in (load_example("foundationmodel.yaml"), ta, load_example("rollout.yaml")):
        apply(api, namespace, obj)
    patch_status(api, "foundationmodels", namespace, "movielens", {"latestVersion": "v1", "versions": [fm_v1]})
    patch_status(api, "taskadapters", namespace, "west-coast", {"latestVersion": "v1", "versions": [ta_v1]})
    wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "True", "Resolved")
    wait_for(lambda: _ro_status(api, namespace).get("revision") == 1, 30, "revision 1")

    # v2 passed the gate, but the adapter has no version for it: revision 1 keeps serving, nothing starts.
    fm_v2 = {**fm_v1, "version": "v2", "artifactUri": "s3://models/foundation/movielens/v2/"}
    patch_status(api, "foundationmodels", namespace, "movielens", {"latestVersion": "v2", "versions": [fm_v1, fm_v2]})
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, "rollouts", "recommender",
                                                                 {"spec": {"model": {"foundationModel": {"version": "v2"}}}})
    c = wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "False", "AdapterVersionNotFound")
    assert "TaskAdapter " + namespace + "/west-coast has no version trained on movielens v2" in c["message"]
    def held() -> str | None:
        m = str(_ro_status(api, namespace).get("message", ""))
        return m if "is not served yet" in m else None

    msg = wait_for(held, 30, "hold message")
    assert msg.startswith("movielens:v2+west-coast is not served yet"), msg
    time.sleep(3 * operator.resync)
    assert _ro_status(api, namespace)["revision"] == 1

    # The adapter gets its v2 version: the whole bundle moves as one new revision.
    ta_v2 = {**ta_v1, "version": "v2", "foundationModelVersion": "v2", "artifactUri": "s3://models/adapters/west-coast/v2/"}
    patch_status(api, "taskadapters", namespace, "west-coast", {"versions": [ta_v1, ta_v2]})
    wait_for(lambda: _ro_status(api, namespace).get("revision") == 2, 60, "revision 2 for movielens v2 + west-coast v2")

    # v3 was held back by the gate: refused with the fix named, and revision 2 stays.
    fm_v3 = {**fm_v1, "version": "v3", "artifactUri": "s3://models/foundation/movielens/v3/", "gate": "HeldBack"}
    ta_v3 = {**ta_v1, "version": "v3", "foundationModelVersion": "v3", "artifactUri": "s3://models/adapters/west-coast/v3/"}
    patch_status(api, "foundationmodels", namespace, "movielens", {"versions": [fm_v1, fm_v2, fm_v3]})
    patch_status(api, "taskadapters", namespace, "west-coast", {"versions": [ta_v1, ta_v2, ta_v3]})
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, "rollouts", "recommender",
                                                                 {"spec": {"model": {"foundationModel": {"version": "v3"}}}})
    c = wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "False", "VersionHeldBack")
    assert "held back by its quality gate" in c["message"] and "allowHeldBack: true" in c["message"]
    time.sleep(3 * operator.resync)
    assert _ro_status(api, namespace)["revision"] == 2

    # Opting in serves it.
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, "rollouts", "recommender",
                                                                 {"spec": {"model": {"foundationModel": {"allowHeldBack": True}}}})
    wait_for(lambda: _ro_status(api, namespace).get("revision") == 3, 60, "revision 3 after allowHeldBack")


def test_a_follow_latest_rollout_moves_by_itself_once_the_bundle_is_complete(
        api: Any, namespace: str, operator: OperatorProcess) -> None:
    fm_v1 = {"version": "v1", "artifactUri": "s3://models/foundation/movielens/v1/", "gate": "Passed", "metrics": {"ndcg@10": 0.1}}
    ta_v1 = {"version": "v1", "foundationModelVersion": "v1", "artifactUri": "s3://models/adapters/west-coast/v1/"}
    ta = load_example("taskadapter.yaml")
    ta["spec"]["foundationModel"].update(versionPolicy="Pinned", version="v1")  # no fine-tuning Workflow: versions by hand
    ro = load_example("rollout.yaml")
    ro["spec"]["model"]["foundationModel"] = {"name": "movielens", "versionPolicy": "FollowLatest"}
    for obj in (load_example("foundationmodel.yaml"), ta, ro):
        apply(api, namespace, obj)
    c = wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "False", "NoCompleteBundle")
    assert "versionPolicy FollowLatest" in c["message"]
    patch_status(api, "foundationmodels", namespace, "movielens", {"latestVersion": "v1", "versions": [fm_v1]})
    patch_status(api, "taskadapters", namespace, "west-coast", {"latestVersion": "v1", "versions": [ta_v1]})
    wait_for(lambda: _ro_status(api, namespace).get("revision") == 1, 30, "revision 1 on v1")
    assert _ro_status(api, namespace)["stableVersion"] == "movielens:v1+west-coast"

    # v2 trains; its adapter version comes later: until then revision 1 stays, and the condition says why.
    fm_v2 = {**fm_v1, "version": "v2", "artifactUri": "s3://models/foundation/movielens/v2/"}
    patch_status(api, "foundationmodels", namespace, "movielens", {"latestVersion": "v2", "versions": [fm_v1, fm_v2]})
    c = wait_for(lambda: (x := condition(get(api, "rollouts", namespace, "recommender"), "ResolvedRefs")) and
                 "v2 waits for adapter(s) west-coast" in x["message"] and x, 30, "the waiting note")
    assert "following the latest version: v1" in c["message"]
    assert _ro_status(api, namespace)["revision"] == 1
    ta_v2 = {**ta_v1, "version": "v2", "foundationModelVersion": "v2", "artifactUri": "s3://models/adapters/west-coast/v2/"}
    patch_status(api, "taskadapters", namespace, "west-coast", {"versions": [ta_v1, ta_v2]})
    wait_for(lambda: _ro_status(api, namespace).get("revision") == 2, 60, "revision 2 for the v2 bundle, with no spec edit")


# ---------------------------------------------------------------- kstatus: Reconciling and Stalled on FoundationModels and TaskAdapters
def _kstatus(api: Any, plural: str, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    obj = get(api, plural, namespace, name)
    return {t: (c["status"], c["reason"]) for t in ("Reconciling", "Stalled") if (c := condition(obj, t)) is not None}


def _kubectl_wait(cluster: Any, namespace: str, what: str, cond: str, timeout: str = "60s") -> str:
    out = cluster.kubectl("wait", f"--for=condition={cond}", what, "-n", namespace, f"--timeout={timeout}", check=False)
    assert out.returncode == 0, f"kubectl wait --for=condition={cond} {what}: {out.stderr}"
    return str(out.stdout)


def test_kubectl_wait_for_stalled_on_a_task_adapter_whose_foundation_model_is_missing_then_untrainable(
        api: Any, namespace: str, cluster: Any, operator: OperatorProcess) -> None:
    """The operator here runs without --trainer-image: versions are recorded by hand, as a CI job would."""
    ta = load_example("taskadapter.yaml")
    apply(api, namespace, ta)
    assert "condition met" in _kubectl_wait(cluster, namespace, "taskadapter/west-coast", "Stalled")
    assert _kstatus(api, "taskadapters", namespace, "west-coast") == {"Reconciling": ("False", "FoundationModelNotFound"),
                                                                      "Stalled": ("True", "FoundationModelNotFound")}
    stalled = condition(get(api, "taskadapters", namespace, "west-coast"), "Stalled")
    assert stalled and f"FoundationModel {namespace}/movielens does not exist; create it or fix the name" in stalled["message"]

    # The FoundationModel appears, but nothing can train it here: it is Stalled, and so is the adapter waiting on it.
    apply(api, namespace, load_example("foundationmodel.yaml"))
    wait_condition(api, "foundationmodels", namespace, "movielens", "Stalled", "True", "NoTrainerImage")
    c = wait_condition(api, "taskadapters", namespace, "west-coast", "Stalled", "True", "FoundationModelStalled")
    assert "is stalled: NoTrainerImage" in c["message"]
    assert condition(get(api, "taskadapters", namespace, "west-coast"), "ResolvedRefs")["reason"] == "FoundationModelNotReady"  # type: ignore[index]

    # Versions recorded by hand: both are done, nothing stalls, and kubectl can wait for exactly that.
    patch_status(api, "foundationmodels", namespace, "movielens", {
        "latestVersion": "v1", "versions": [{"version": "v1", "artifactUri": "s3://models/foundation/movielens/v1/"}]})
    _kubectl_wait(cluster, namespace, "foundationmodel/movielens", "Stalled=False")
    wait_condition(api, "taskadapters", namespace, "west-coast", "Stalled", "True", "NoTrainerImage")  # resolved, no adapter version
    patch_status(api, "taskadapters", namespace, "west-coast", {
        "latestVersion": "v1", "versions": [{"version": "v1", "foundationModelVersion": "v1", "artifactUri": "s3://models/adapters/west-coast/v1/"}]})
    _kubectl_wait(cluster, namespace, "taskadapter/west-coast", "Stalled=False")
    _kubectl_wait(cluster, namespace, "taskadapter/west-coast", "Ready")
    for plural, name in (("foundationmodels", "movielens"), ("taskadapters", "west-coast")):
        assert _kstatus(api, plural, namespace, name) == {"Reconciling": ("False", "Reconciled"), "Stalled": ("False", "NotStalled")}
    # Stalled and Reconciling post no Event of their own (the conditions that say why do).
    reasons = {e.reason for e in events_for(api, namespace, "west-coast")}
    assert "FoundationModelNotFound" in reasons and not reasons & {"NotStalled", "Reconciled", "FoundationModelStalled"}, reasons


def test_reconciling_while_a_version_trains_then_stalled_when_its_workflow_fails(
        api: Any, namespace: str, cluster: Any, operator: OperatorProcess, tmp_path: Any) -> None:
    """With a trainer image the operator submits a training Workflow. No Argo controller runs without the node, so the
    Workflow stays as submitted (Reconciling), and the test then fails it as Argo would (Stalled, for the adapter too)."""
    operator.stop()  # the module's operator trains nothing: it would write NoTrainerImage over this one's status
    trainer = OperatorProcess(cluster.kubeconfig_path, tmp_path / "trainer.log", resync=1.0,
                              extra=["--trainer-image=localhost/fmop/fmrec:test", f"--namespaces={namespace}"]).start()
    try:
        apply(api, namespace, load_example("foundationmodel.yaml"))
        apply(api, namespace, load_example("taskadapter.yaml"))
        _kubectl_wait(cluster, namespace, "foundationmodel/movielens", "Reconciling")
        fm = get(api, "foundationmodels", namespace, "movielens")
        assert fm["status"]["phase"] == "Training" and condition(fm, "Stalled")["status"] == "False"  # type: ignore[index]
        workflow = fm["status"]["workflowName"]
        _kubectl_wait(cluster, namespace, "taskadapter/west-coast", "Reconciling")  # waits for the version that trains
        assert _kstatus(api, "taskadapters", namespace, "west-coast")["Reconciling"] == ("True", "FoundationModelNotReady")

        client.CustomObjectsApi(api).patch_namespaced_custom_object(  # Argo: the Workflow failed
            "argoproj.io", "v1alpha1", namespace, "workflows", workflow,
            {"status": {"phase": "Failed", "message": "child 'pretrain' failed", "progress": "1/4"}})
        _kubectl_wait(cluster, namespace, "foundationmodel/movielens", "Stalled")
        assert _kstatus(api, "foundationmodels", namespace, "movielens") == {"Reconciling": ("False", "WorkflowFailed"),
                                                                            "Stalled": ("True", "WorkflowFailed")}
        stalled = condition(get(api, "foundationmodels", namespace, "movielens"), "Stalled")
        assert stalled and f"training v1 failed in Workflow {workflow}" in stalled["message"] and "child 'pretrain' failed" in stalled["message"]
        _kubectl_wait(cluster, namespace, "taskadapter/west-coast", "Stalled")
        assert _kstatus(api, "taskadapters", namespace, "west-coast")["Stalled"] == ("True", "FoundationModelStalled")
        time.sleep(3 * trainer.resync)
        assert _kstatus(api, "foundationmodels", namespace, "movielens")["Stalled"] == ("True", "WorkflowFailed"), "a failed Workflow is not retried"
    finally:
        trainer.stop()
        operator.start()
