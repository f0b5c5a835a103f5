"""The chart in namespaced mode (watchNamespaces) grants least privilege, proved against the real API server
with the chart's own ServiceAccount: a Role and RoleBinding in each watched namespace and nothing
cluster-wide, so the identity can read, create, change and delete nothing in a namespace it does not watch
(Workflows, InferenceServices, HTTPRoutes, VirtualServices, Traefik objects, pods and their logs, Secrets,
our own kinds) and lists nothing across namespaces; and the real operator, running as that identity,
still serves a watched namespace: it trains a FoundationModel (a Workflow), reads the failed step's pods,
resolves a TaskAdapter, and takes a Rollout through its first writes (status, the InferenceService, the
HTTPRoute) with no RBAC denial in its log or in any condition. No node: nothing is ever Ready."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from fmdev.local.common import free_port
from tests.conftest import load_example
from tests.integration.helpers import (CHART, GROUP, VERSION, OperatorProcess, chart_identity, get, rbac_denials, wait_condition,
                                       wait_for)
from tests.integration.test_helm import helm
SA = "fmop-fm-operator"
PLURALS = {"FoundationModel": "foundationmodels", "TaskAdapter": "taskadapters", "Rollout": "rollouts"}
WRITTEN = [  # what the operator creates, reads and deletes in a namespace it serves: (group, resource)
    ("argoproj.io", "workflows"), ("serving.kserve.io", "inferenceservices"), ("gateway.networking.k8s.io", "httproutes"),
    ("networking.istio.io", "virtualservices"), ("traefik.io", "traefikservices"), ("traefik.io", "ingressroutes"),
]
OURS = [(GROUP, "foundationmodels"), (GROUP, "taskadapters"), (GROUP, "rollouts")]
# (verb, group, resource, subresource): nothing of this in a namespace the operator does not watch.
FORBIDDEN_ELSEWHERE = (
    [(verb, g, r, "") for g, r in WRITTEN for verb in ("get", "list", "watch", "create", "patch", "delete")]
    + [(verb, g, r, "") for g, r in OURS for verb in ("get", "list", "watch", "patch")]
    + [(verb, GROUP, r, "status") for _, r in OURS for verb in ("get", "patch", "update")]
    + [("get", "", "pods", ""), ("list", "", "pods", ""), ("get", "", "pods", "log"), ("get", "", "secrets", ""),
       ("list", "", "secrets", ""), ("create", "", "events", ""), ("get", "argoproj.io", "workflowtemplates", "")]
)


def _can(api: Any, verb: str, group: str, resource: str, subresource: str = "", namespace: str = "") -> bool:
    """SelfSubjectAccessReview as the identity `api` logs in with (namespace "": across all namespaces)."""
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
        verb=verb, group=group, resource=resource, subresource=subresource or None, namespace=namespace or None)))
    return bool(client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed)


def _get(custom: Any, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
        return obj
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


@pytest.fixture(scope="module")
def admin(control_plane: Any) -> Any:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))


@pytest.fixture(scope="module")
def namespaced(control_plane: Any, admin: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The chart rendered with watchNamespaces={watched} (helm template), its RBAC applied; the
    ServiceAccount's kubeconfig; a namespace it watches and one it does not."""
    suffix = uuid.uuid4().hex[:6]
    names = {"release": f"fmops-{suffix}", "watched": f"team-a-{suffix}", "other": f"team-b-{suffix}"}
    core = client.CoreV1Api(admin)
    for ns in names.values():
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        with chart_identity(control_plane, names["release"], [names["watched"]], tmp_path_factory.mktemp("sa"), "1h") as who:
            assert who.lease_name == SA
            yield {**names, "kubeconfig": who.kubeconfig, "sa": config.new_client_from_config(config_file=str(who.kubeconfig)),
                   "cluster_wide": [d for d in who.rbac if d["kind"].startswith("Cluster")]}
    finally:
        for ns in names.values():
            control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_namespaced_mode_grants_nothing_cluster_wide(namespaced: dict[str, Any]) -> None:
    assert [f"{d['kind']}/{d['metadata']['name']}" for d in namespaced["cluster_wide"]] == []
    sa = namespaced["sa"]
    denied = [f"{verb} {resource}" for verb, group, resource in
              [("list", "apiextensions.k8s.io", "customresourcedefinitions"), ("list", "", "namespaces"), ("list", "", "nodes")]
              if _can(sa, verb, group, resource)]
    assert denied == [], "cluster-scoped rights in namespaced mode"


@pytest.mark.parametrize("scope", ["another-namespace", "all-namespaces"])
def test_nothing_outside_the_watched_namespaces(namespaced: dict[str, Any], scope: str) -> None:
    ns = namespaced["other"] if scope == "another-namespace" else ""
    allowed = [f"{verb} {resource}{'/' + sub if sub else ''}{'.' + group if group else ''}"
               for verb, group, resource, sub in FORBIDDEN_ELSEWHERE if _can(namespaced["sa"], verb, group, resource, sub, ns)]
    assert allowed == [], f"the chart's ServiceAccount may, {'in ' + ns if ns else 'across all namespaces'}: {', '.join(allowed)}"


def test_what_it_needs_in_the_watched_namespace(namespaced: dict[str, Any]) -> None:
    needed = ([(verb, g, r, "") for g, r in WRITTEN for verb in ("get", "list", "watch", "create", "patch", "delete")]
              + [(verb, g, r, "") for g, r in OURS for verb in ("get", "list", "watch", "patch")]
              + [("update", g, r, "status") for g, r in OURS]
              + [("list", "", "pods", ""), ("get", "", "pods", "log"), ("create", "", "events", "")])
    missing = [f"{verb} {resource}" for verb, group, resource, sub in needed
               if not _can(namespaced["sa"], verb, group, resource, sub, namespaced["watched"])]
    assert missing == []
    assert not _can(namespaced["sa"], "get", "", "secrets", "", namespaced["watched"])  # Secrets: never


def test_real_requests_elsewhere_are_refused(namespaced: dict[str, Any], admin: Any) -> None:
    """Not only the reviews: the API server refuses the requests themselves (403), on objects that exist."""
    other, sa = namespaced["other"], namespaced["sa"]
    core = client.CoreV1Api(admin)
    core.create_namespaced_secret(other, client.V1Secret(metadata=client.V1ObjectMeta(name="their-secret"), string_data={"k": "v"}))
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "their-route"},
             "spec": {"parentRefs": [{"name": "gw"}]}}
    client.CustomObjectsApi(admin).create_namespaced_custom_object("gateway.networking.k8s.io", "v1", other, "httproutes", route)
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "mine"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "triton"}, "storageUri": "pvc://x/y"}}}}
    attempts = {
        "read a Secret": lambda: client.CoreV1Api(sa).read_namespaced_secret("their-secret", other),
        "list pods": lambda: client.CoreV1Api(sa).list_namespaced_pod(other),
        "read a pod's log": lambda: client.CoreV1Api(sa).read_namespaced_pod_log("any", other),
        "delete an HTTPRoute": lambda: client.CustomObjectsApi(sa).delete_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", other, "httproutes", "their-route"),
        "create an InferenceService": lambda: client.CustomObjectsApi(sa).create_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", other, "inferenceservices", isvc),
        "list Rollouts everywhere": lambda: client.CustomObjectsApi(sa).list_cluster_custom_object(GROUP, VERSION, "rollouts"),
    }
    answers = {}
    for what, call in attempts.items():
        try:
            call()
            answers[what] = 200
        except client.ApiException as err:
            answers[what] = err.status
    assert answers == dict.fromkeys(attempts, 403)


def test_the_operator_serves_the_watched_namespace_as_that_identity(namespaced: dict[str, Any], admin: Any, tmp_path: Path) -> None:
    watched, other = namespaced["watched"], namespaced["other"]
    custom = client.CustomObjectsApi(admin)
    token = tmp_path / "webhook-token"
    token.write_text("least-privilege-" + "x" * 24)
    op = OperatorProcess(namespaced["kubeconfig"], tmp_path / "operator.log", leader_election=True,
                         extra=[f"--namespaces={watched}", "--trainer-image=localhost/fmop/fmrec:test",
                                f"--lease-namespace={namespaced['release']}", "--lease-name=fmop-fm-operator",
                                f"--webhook-port={free_port()}", f"--webhook-token-file={token}"]).start()
    try:
        # A FoundationModel to train: the operator submits its Workflow, and reads the failed step's pods when it fails.
        trained = load_example("foundationmodel.yaml")
        trained["metadata"]["name"] = "trained"
        # One whose versions a CI job records by hand, an adapter pinned to one of them, and a Rollout serving both.
        served = load_example("foundationmodel.yaml")
        adapter = load_example("taskadapter.yaml")
        adapter["spec"]["foundationModel"].update(versionPolicy="Pinned", version="v1")
        rollout = load_example("rollout.yaml")
        for ns in (watched, other):  # the same objects where it is not watching: nothing may happen to them
            for obj in (trained, served, adapter, rollout):
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[obj["kind"]], obj)
        fm_v1 = {"version": "v1", "artifactUri": "s3://models/foundation/movielens/v1/", "gate": "Passed"}
        ta_v1 = {"version": "v1", "foundationModelVersion": "v1", "artifactUri": "s3://models/adapters/west-coast/v1/"}
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, watched, "taskadapters", "west-coast",
                                                     {"status": {"latestVersion": "v1", "versions": [ta_v1]}})
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, watched, "foundationmodels", "movielens",
                                                     {"status": {"latestVersion": "v1", "versions": [fm_v1]}})

        workflow = wait_for(lambda: (get(admin, "foundationmodels", watched, "trained").get("status") or {}).get("workflowName"),
                            60, "the training Workflow of FoundationModel trained")
        wait_for(lambda: _get(custom, "argoproj.io", "v1alpha1", watched, "workflows", workflow), 60, f"Workflow {workflow}")
        custom.patch_namespaced_custom_object("argoproj.io", "v1alpha1", watched, "workflows", workflow,
                                              {"status": {"phase": "Failed", "message": "child 'pretrain' failed", "progress": "1/4"}})
        wait_condition(admin, "foundationmodels", watched, "trained", "Stalled", "True", "WorkflowFailed")

        wait_condition(admin, "rollouts", watched, "recommender", "ResolvedRefs", "True", "Resolved")
        wait_for(lambda: (get(admin, "rollouts", watched, "recommender").get("status") or {}).get("revision") == 1, 60, "revision 1")
        isvcs = wait_for(lambda: custom.list_namespaced_custom_object("serving.kserve.io", "v1beta1", watched, "inferenceservices")["items"],
                         60, "the Rollout's InferenceService")
        assert [i["metadata"]["labels"].get("fmops.dev/rollout") for i in isvcs] == ["recommender"]
        routes = wait_for(lambda: custom.list_namespaced_custom_object("gateway.networking.k8s.io", "v1", watched, "httproutes")["items"],
                          60, "the Rollout's HTTPRoute")
        assert [r["metadata"]["name"] for r in routes] == ["recommender"]

        for plural, name in (("foundationmodels", "trained"), ("foundationmodels", "movielens"), ("taskadapters", "west-coast"),
                             ("rollouts", "recommender")):
            for c in (get(admin, plural, watched, name).get("status") or {}).get("conditions", []):
                assert "forbidden" not in c.get("message", "").lower() and "403" not in c.get("message", ""), (plural, name, c)
            assert not get(admin, plural, other, name).get("status"), f"{plural}/{name} in {other} was written"
        for group, version, plural in (("argoproj.io", "v1alpha1", "workflows"), ("serving.kserve.io", "v1beta1", "inferenceservices"),
                                       ("gateway.networking.k8s.io", "v1", "httproutes")):
            theirs = [i["metadata"]["name"] for i in custom.list_namespaced_custom_object(group, version, other, plural)["items"]]
            assert [n for n in theirs if n != "their-route"] == [], f"{plural} in {other}"  # their-route: another test's
    except AssertionError as err:
        raise AssertionError(f"{err}\noperator log (as {SA}):\n{op.log()[-4000:]}") from None
    finally:
        op.stop()
    denials = rbac_denials(op.log())
    assert not denials, "\n".join(denials[:5])


def test_a_namespace_that_is_not_a_name_is_refused(control_plane: Any) -> None:
    rendered = helm(control_plane, "template", "fmop", str(CHART), "--set", "watchNamespaces={team-*}")
    assert rendered.returncode != 0
    assert 'watchNamespaces: "team-*" is not a namespace name' in rendered.stderr
