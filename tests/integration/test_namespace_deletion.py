"""A namespace the operator watches (--namespaces) is deleted, while the operator runs and while it is
down, with the admin identity and with the chart's ServiceAccount: the namespace goes, its objects are
never stranded on the operator's finalizer (kopf holds fmops.dev/finalizer on every object that has a
daemon or a timer: each Rollout, FoundationModel and TaskAdapter)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.conftest import load_example
from tests.integration.helpers import CHART, GROUP, VERSION, OperatorProcess, token_kubeconfig, wait_for
from tests.integration.test_helm import helm

FINALIZER = f"{GROUP}/finalizer"
PLURALS = {"FoundationModel": "foundationmodels", "TaskAdapter": "taskadapters", "Rollout": "rollouts"}
GONE_WITHIN = 90.0  # the namespace controller looks again at a namespace waiting on finalizers every 15 s or so


@pytest.fixture(scope="module")
def admin(control_plane: Any) -> Any:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))


@pytest.fixture(scope="module")
def chart_identity(control_plane: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A kubeconfig for the ServiceAccount of the installed chart, bound to exactly the rules the chart grants."""
    release_ns = f"fmops-{uuid.uuid4().hex[:6]}"
    installed = helm(control_plane, "install", "fmop", str(CHART), "--namespace", release_ns, "--create-namespace")
    assert installed.returncode == 0, installed.stderr
    try:
        yield token_kubeconfig(control_plane, release_ns, "fmop-fm-operator", tmp_path_factory.mktemp("sa") / "sa.kubeconfig")
    finally:
        helm(control_plane, "uninstall", "fmop", "--namespace", release_ns)
        control_plane.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def _phase(core: Any, namespace: str) -> str:
    try:
        return str(core.read_namespace(namespace).status.phase)
    except client.ApiException as err:
        if err.status == 404:
            return "Gone"
        raise


def _objects(admin: Any, namespace: str) -> list[dict[str, Any]]:
    custom = client.CustomObjectsApi(admin)
    return [o for plural in PLURALS.values() for o in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]]


@pytest.mark.parametrize("identity", ["admin", "chart-serviceaccount"])
@pytest.mark.parametrize("operator", ["running", "down"])
def test_a_deleted_namespace_goes_whether_the_operator_runs_or_not(control_plane: Any, admin: Any, request: pytest.FixtureRequest,
                                                                  tmp_path: Path, identity: str, operator: str) -> None:
    kubeconfig = control_plane.kubeconfig_path if identity == "admin" else request.getfixturevalue("chart_identity")
    core, custom = client.CoreV1Api(admin), client.CustomObjectsApi(admin)
    ns = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    started: list[OperatorProcess] = []

    def start(log: str) -> OperatorProcess:
        op = OperatorProcess(kubeconfig, tmp_path / log, extra=[f"--namespaces={ns}"])
        started.append(op)
        return op.start()

    try:
        op = start("operator.log")
        for name in ("foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml"):
            obj = load_example(name)
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[obj["kind"]], obj)
        # The precondition of the scenario: kopf holds its finalizer on all three.
        wait_for(lambda: len(held := [o for o in _objects(admin, ns) if FINALIZER in (o["metadata"].get("finalizers") or [])]) == 3 and held,
                 30, f"{FINALIZER} on the FoundationModel, TaskAdapter and Rollout")
        if operator == "down":
            op.stop()
        core.delete_namespace(ns)
        if operator == "down":  # the namespace controller deletes them; the finalizer holds them (and so the namespace)
            wait_for(lambda: {o["kind"] for o in _objects(admin, ns) if o["metadata"].get("deletionTimestamp")} == set(PLURALS), 60,
                     "the namespace controller to delete our objects")
            time.sleep(2)
            assert _phase(core, ns) == "Terminating" and len(_objects(admin, ns)) == 3
            op = start("operator-after.log")
        wait_for(lambda: _phase(core, ns) == "Gone", GONE_WITHIN,
                 f"namespace {ns} to go (left: {[(o['kind'], o['metadata'].get('finalizers')) for o in _objects(admin, ns)]}; "
                 f"operator log {op.log_path})")
    finally:
        for each in started:
            each.stop()
        if _phase(core, ns) != "Gone":  # a failed run leaves no namespace behind for the session
            for o in _objects(admin, ns):
                custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[o["kind"]], o["metadata"]["name"],
                                                      {"metadata": {"finalizers": None}})
