"""status.versions against the real API server with two writers whose read-modify-write windows overlap:
the operator's reconcile (the handler kopf calls, with the copy of the object kopf read) records the
version its Workflow trained, while another writer (a second replica, a person, a CI job) records a
version of its own from a copy read at the same moment. No entry is lost, and the other writer's
Workflow is not deleted as if its version were pruned."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client, config

from fmop import handlers
from fmop.api import FoundationModel
from fmop.config import Config
from fmop.kube import Kube
from fmop.rollout import naming
from fmop.training.render import Target, render_foundation_model
from tests.conftest import load_example
from tests.integration.helpers import GROUP, VERSION
from tests.unit.test_training import IMAGE, finished

FM = "foundationmodels"


@pytest.fixture
def admin(control_plane: Any) -> Any:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))


@pytest.fixture
def ns(admin: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(admin)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _workflow(fm: dict[str, Any], version: str, data_revision: str = "") -> dict[str, Any]:
    """The Workflow the operator renders for `version`, created as Argo leaves it once it succeeded."""
    meta = fm["metadata"]
    target = Target(meta["namespace"], meta["name"], meta["uid"], meta["generation"], version, data_revision)
    wf = finished(render_foundation_model(FoundationModel.model_validate(fm), target, IMAGE), "Succeeded", {"NDCG@10": 0.12})
    name = wf["metadata"]["name"]
    wf["status"]["nodes"][name]["name"] = name  # Argo's schema wants it
    return wf


def _operator_writes(api: Any, stale: dict[str, Any]) -> None:
    """One reconcile as kopf runs it: the handler with the object as kopf read it, then whatever it left in
    kopf's patch applied as kopf applies it (a merge patch of status; this operator writes status itself)."""
    memo = kopf.Memo()
    memo["config"] = Config(trainer_image=IMAGE)
    memo["kube"] = Kube(api, field_manager=naming.FIELD_MANAGER)
    patch = kopf.Patch()
    meta = stale["metadata"]
    handlers.reconcile_foundation_model(body=kopf.Body(stale), patch=patch, memo=memo, namespace=meta["namespace"], name=meta["name"],
                                        spec=kopf.Spec(kopf.Body(stale)), logger=None)
    if patch.get("status"):
        client.CustomObjectsApi(api).patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], FM, meta["name"],
                                                                           {"status": dict(patch["status"])})


def test_two_writers_from_stale_copies_lose_no_version(admin: Any, ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "info", lambda *_, **__: None)  # Events need kopf's running poster; not the point here
    monkeypatch.setattr(kopf, "warn", lambda *_, **__: None)
    custom = client.CustomObjectsApi(admin)
    obj = load_example("foundationmodel.yaml")
    obj["metadata"]["namespace"] = ns
    fm = custom.create_namespaced_custom_object(GROUP, VERSION, ns, FM, obj)
    # v1 trained and recorded; the operator's Workflow for v2 has just succeeded; another writer's v3 too
    # (a Workflow of the same spec on another data revision: not the operator's current one).
    for version, revision in (("v1", ""), ("v2", ""), ("v3", "import-2026-01")):
        wf = _workflow(fm, version, revision)
        wf["metadata"]["namespace"] = ns
        custom.create_namespaced_custom_object("argoproj.io", "v1alpha1", ns, "workflows", wf)
    v1 = {"version": "v1", "artifactUri": f"pvc://fmop-models/{ns}/foundationmodels/movielens/v1/triton", "workflow": "movielens-v1-g1",
          "specGeneration": 1, "gate": "Passed", "metrics": {"NDCG@10": 0.12}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, FM, "movielens", {"status": {"latestVersion": "v1", "versions": [v1]}})
    v3_workflow = _workflow(fm, "v3", "import-2026-01")["metadata"]["name"]

    operator_read, other_wrote = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def operator() -> None:
        try:
            stale = custom.get_namespaced_custom_object(GROUP, VERSION, ns, FM, "movielens")
            operator_read.set()
            assert other_wrote.wait(30)  # the other writer lands between our read and our write
            _operator_writes(admin, stale)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)

    def other_writer() -> None:
        """Records v3 the careful way: the whole status back with the resourceVersion it read."""
        try:
            assert operator_read.wait(30)
            mine = custom.get_namespaced_custom_object(GROUP, VERSION, ns, FM, "movielens")
            v3 = {"version": "v3", "artifactUri": f"pvc://fmop-models/{ns}/foundationmodels/movielens/v3/triton", "workflow": v3_workflow,
                  "metrics": {"NDCG@10": 0.12}}
            status = {**mine["status"], "versions": [*mine["status"]["versions"], v3]}
            custom.replace_namespaced_custom_object_status(GROUP, VERSION, ns, FM, "movielens", {**mine, "status": status})
            other_wrote.set()
        except BaseException as err:  # noqa: BLE001
            failures.append(err)
            other_wrote.set()

    threads = [threading.Thread(target=operator), threading.Thread(target=other_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures

    final = custom.get_namespaced_custom_object(GROUP, VERSION, ns, FM, "movielens")
    listed = {v["version"]: v.get("workflow") for v in final["status"]["versions"]}
    workflows = {w["metadata"]["name"] for w in custom.list_namespaced_custom_object("argoproj.io", "v1alpha1", ns, "workflows")["items"]}
    # both at once, so a failure shows both: the entry lost, and its Workflow deleted as if its version had been pruned
    assert (listed, v3_workflow in workflows) == ({"v1": "movielens-v1-g1", "v2": "movielens-v2-g1", "v3": v3_workflow}, True)
    assert final["status"]["latestVersion"] == "v2" and final["status"]["phase"] == "Ready"


def test_another_writer_adds_a_version_with_server_side_apply_and_the_operators_entries_stay(admin: Any, ns: str) -> None:
    """status.versions is a list-map keyed by version: a writer that applies one entry adds it to the list
    (and owns only it) instead of replacing the list, and needs no resourceVersion."""
    custom = client.CustomObjectsApi(admin)
    obj = load_example("foundationmodel.yaml")
    obj["metadata"]["namespace"] = ns
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, FM, obj)
    mine = custom.get_namespaced_custom_object(GROUP, VERSION, ns, FM, "movielens")
    v1 = {"version": "v1", "artifactUri": "pvc://fmop-models/x/v1/triton", "workflow": "movielens-v1-g1", "specGeneration": 1}
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, ns, FM, "movielens", {**mine, "status": {"latestVersion": "v1", "versions": [v1]}})
    v7 = {"version": "v7", "artifactUri": "s3://imported/v7/"}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, FM, "movielens",
                                                 {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel",
                                                  "metadata": {"name": "movielens", "namespace": ns}, "status": {"versions": [v7]}},
                                                 field_manager="ci-import", _content_type="application/apply-patch+yaml")
    final = custom.get_namespaced_custom_object(GROUP, VERSION, ns, FM, "movielens")["status"]
    assert [v["version"] for v in final["versions"]] == ["v1", "v7"] and final["latestVersion"] == "v1"
