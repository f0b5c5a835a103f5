"""The Kubernetes adapter's one error mapping, table-driven, and its calls with the client faked at its
edge: the kubernetes client's API methods answer with what the API server would (ApiException objects,
connection errors, dicts). No cluster; the same calls run against the real API server in
tests/integration (test_providers.py, test_operator.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3.exceptions
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fmop import kinds
from fmop.kinds import EVENT, POD, ROLLOUT, WORKFLOW
from fmop.kube import AlreadyExists, Call, Conflict, Kube, KubeError, NotFound, NotInstalled, error_for
from fmop.rollout.providers import PROVIDERS
from fmop.rollout.providers import kube as traffic
from fmop.rollout.providers.base import ObjectRef

NS = "team-a"


def status(code: int, message: str, reason: str = "", name: str = "", kind: str = "") -> ApiException:
    """An ApiException as the client raises it for an API server's Status answer."""
    details = {"name": name, "kind": kind} if name else {}
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "details": details, "code": code}
    return ApiException(status=code, reason=reason or "Error", body=json.dumps(body))


def plain(code: int, text: str) -> ApiException:
    """An answer that is no Status object (an unknown group/version: the mux's "404 page not found")."""
    return ApiException(status=code, reason="Not Found", body=text)


GET = Call(f"get Workflow {NS}/train-v1", WORKFLOW, "get", "train-v1")
LIST = Call(f"list Workflow in {NS} (fmops.dev/owner=m)", WORKFLOW, "list")
APPLY = Call(f"apply Workflow {NS}/train-v1", WORKFLOW, "create and patch", "train-v1")
DELETE = Call(f"delete Workflow {NS}/train-v1", WORKFLOW, "delete", "train-v1")
CREATE = Call(f"create Workflow {NS}/train-v1", WORKFLOW, "create", "train-v1")
STATUS = Call(f"update status of Rollout {NS}/reco", ROLLOUT, "update", "reco", "status")
LOG = Call(f"read log of Pod {NS}/train-v1-123", POD, "get", "train-v1-123", "log")
EVENTS = Call(f"create Event Started about Rollout {NS}/reco", EVENT, "create")
CANNOT_CONNECT = urllib3.exceptions.MaxRetryError(None, "/apis", urllib3.exceptions.NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
MISSING = status(404, 'workflows.argoproj.io "train-v1" not found', "NotFound", "train-v1", "workflows")
NO_SUCH_RESOURCE = status(404, "the server could not find the requested resource", "NotFound")
FORBIDDEN = status(403, 'workflows.argoproj.io "train-v1" is forbidden: User "system:serviceaccount:fmop:fm-operator" cannot get resource',
                   "Forbidden", "train-v1", "workflows")
INSTALL_ARGO = "the API server does not serve workflows.argoproj.io/v1alpha1: install Argo Workflows"

# (call, what the API server answered, error class, retry, what the message must say)
MAPPING = [
    pytest.param(GET, CANNOT_CONNECT, KubeError, True, f"get Workflow {NS}/train-v1: API server unreachable: ", id="unreachable-retries"),
    pytest.param(LIST, ConnectionResetError("reset by peer"), KubeError, True, "API server unreachable: reset by peer", id="connection-reset-retries"),
    pytest.param(GET, urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"), KubeError, True, "API server unreachable",  # type: ignore[arg-type]
                 id="read-timeout-retries"),
    pytest.param(GET, ApiException(status=0, reason="SSLError: certificate verify failed"), KubeError, True,
                 "API server unreachable: SSLError: certificate verify failed", id="tls-failure-retries"),
    pytest.param(GET, status(500, "etcdserver: request timed out", "InternalError"), KubeError, True,
                 "HTTP 500 InternalError: etcdserver: request timed out", id="500-retries"),
    pytest.param(APPLY, status(503, "the server is currently unable to handle the request", "ServiceUnavailable"), KubeError, True,
                 "HTTP 503", id="503-retries"),
    pytest.param(LIST, status(429, "too many requests, please try again later", "TooManyRequests"), KubeError, True,
                 "HTTP 429 TooManyRequests: too many requests", id="429-retries"),
    pytest.param(GET, FORBIDDEN, KubeError, False,
                 f"get Workflow {NS}/train-v1: not allowed (HTTP 403): give the operator's ServiceAccount get on workflows.argoproj.io: "
                 f"{FORBIDDEN.body and json.loads(FORBIDDEN.body)['message']}", id="403-get-names-verb-and-resource"),
    pytest.param(LIST, status(403, "forbidden", "Forbidden"), KubeError, False,
                 "give the operator's ServiceAccount list on workflows.argoproj.io", id="403-list"),
    pytest.param(APPLY, status(403, "forbidden", "Forbidden"), KubeError, False,
                 "give the operator's ServiceAccount create and patch on workflows.argoproj.io", id="403-apply-needs-create-and-patch"),
    pytest.param(DELETE, status(403, "forbidden", "Forbidden"), KubeError, False,
                 "give the operator's ServiceAccount delete on workflows.argoproj.io", id="403-delete"),
    pytest.param(STATUS, status(403, "forbidden", "Forbidden"), KubeError, False,
                 "give the operator's ServiceAccount update on rollouts.fmops.dev/status", id="403-status-names-the-subresource"),
    pytest.param(LOG, status(403, "forbidden", "Forbidden"), KubeError, False, "give the operator's ServiceAccount get on pods/log",
                 id="403-pod-log-core-group"),
    pytest.param(EVENTS, status(403, "forbidden", "Forbidden"), KubeError, False, "give the operator's ServiceAccount create on events",
                 id="403-event"),
    pytest.param(GET, status(401, "Unauthorized", "Unauthorized"), KubeError, False, "not allowed (HTTP 401): give the operator's ServiceAccount get",
                 id="401-no-retry"),
    pytest.param(GET, MISSING, NotFound, True, f'get Workflow {NS}/train-v1: not found: workflows.argoproj.io "train-v1" not found',
                 id="404-the-object-is-missing"),
    pytest.param(APPLY, status(404, f'namespaces "{NS}" not found', "NotFound", NS, "namespaces"), NotFound, True,
                 f'namespaces "{NS}" not found', id="404-its-namespace-is-missing"),
    pytest.param(GET, plain(404, "404 page not found"), NotInstalled, False, INSTALL_ARGO, id="404-unknown-group-version-install-hint"),
    pytest.param(APPLY, NO_SUCH_RESOURCE, NotInstalled, False, INSTALL_ARGO, id="404-unknown-resource-install-hint"),
    pytest.param(LIST, MISSING, NotInstalled, False, INSTALL_ARGO, id="404-on-a-list-is-the-kind"),
    pytest.param(STATUS, status(409, 'Operation cannot be fulfilled on rollouts.fmops.dev "reco": the object has been modified', "Conflict",
                                "reco", "rollouts"), Conflict, True, "conflict (HTTP 409): Operation cannot be fulfilled", id="409-conflict"),
    pytest.param(CREATE, status(409, 'workflows.argoproj.io "train-v1" already exists', "AlreadyExists", "train-v1", "workflows"),
                 AlreadyExists, True, f'create Workflow {NS}/train-v1: already exists (HTTP 409): workflows.argoproj.io "train-v1" already exists',
                 id="409-already-exists-on-create"),
    pytest.param(APPLY, status(422, 'Workflow.argoproj.io "train-v1" is invalid: spec.workflowTemplateRef.nmae: field not declared in schema',
                               "Invalid"), KubeError, False,
                 f"apply Workflow {NS}/train-v1: rejected by the schema: Workflow.argoproj.io \"train-v1\" is invalid: spec.workflowTemplateRef.nmae",
                 id="422-the-server-message-names-the-field"),
    pytest.param(APPLY, status(500, 'failed to create typed patch object (/train-v1; argoproj.io/v1alpha1, Kind=Workflow): .spec.parallelism: '
                                    'expected numeric (int or float), got string', "InternalError"), KubeError, False,
                 "rejected by the schema: failed to create typed patch object", id="500-typed-patch-is-the-schema"),
    pytest.param(APPLY, status(400, "the body of the request was in an unknown format", "BadRequest"), KubeError, True,
                 "HTTP 400 BadRequest: the body of the request was in an unknown format", id="other-status-retries"),
]


@pytest.mark.parametrize(("call", "answer", "cls", "retry", "says"), MAPPING)
def test_error_mapping(call: Call, answer: Exception, cls: type[KubeError], retry: bool, says: str) -> None:
    err = error_for(call, answer)
    assert type(err) is cls
    assert err.retry is retry
    assert says in str(err), str(err)
    assert str(err).startswith(call.what + ": ")
    assert err.status == (answer.status or None if isinstance(answer, ApiException) else None)


def test_a_message_that_is_no_json_is_kept_whole() -> None:
    err = error_for(APPLY, ApiException(status=502, reason="Bad Gateway", body="<html>upstream connect error</html>"))
    assert str(err) == f"apply Workflow {NS}/train-v1: HTTP 502 Bad Gateway: <html>upstream connect error</html>" and err.retry


# ---------------------------------------------------------------- the calls, client faked at its edge
def answers(*results: Any) -> Callable[..., Any]:
    """A client method that returns (or raises) each result in turn and records how it was called."""
    queue = list(results)

    def method(*args: Any, **kwargs: Any) -> Any:
        method.calls.append((args, kwargs))  # type: ignore[attr-defined]
        result = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(result, BaseException):
            raise result
        return result

    method.calls = []  # type: ignore[attr-defined]
    return method


@pytest.fixture
def kube() -> Kube:
    return Kube(client.ApiClient(), field_manager="fm-operator")


def fake(monkeypatch: pytest.MonkeyPatch, kube: Kube, method: str, *results: Any) -> Any:
    api = kube._core if hasattr(client.CoreV1Api, method) else kube._custom
    fn = answers(*results)
    monkeypatch.setattr(api, method, fn)
    return fn


def test_get_is_none_when_the_object_is_missing_and_an_error_otherwise(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    fn = fake(monkeypatch, kube, "get_namespaced_custom_object", {"metadata": {"name": "movielens"}}, MISSING, plain(404, "404 page not found"),
              CANNOT_CONNECT)
    assert kube.get(kinds.FOUNDATION_MODEL, NS, "movielens") == {"metadata": {"name": "movielens"}}
    assert fn.calls[0][0] == ("fmops.dev", "v1alpha1", NS, "foundationmodels", "movielens")
    assert kube.get(WORKFLOW, NS, "train-v1") is None
    with pytest.raises(NotInstalled, match="install Argo Workflows"):
        kube.get(WORKFLOW, NS, "train-v1")
    with pytest.raises(KubeError, match="unreachable") as err:
        kube.get(WORKFLOW, NS, "train-v1")
    assert err.value.retry


def test_list_selects_by_labels(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    fn = fake(monkeypatch, kube, "list_namespaced_custom_object", {"items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]})
    found = kube.list(WORKFLOW, NS, {"fmops.dev/kind": "FoundationModel", "fmops.dev/owner": "movielens"})
    assert [o["metadata"]["name"] for o in found] == ["a", "b"]
    assert fn.calls[0] == (("argoproj.io", "v1alpha1", NS, "workflows"), {"label_selector": "fmops.dev/kind=FoundationModel,fmops.dev/owner=movielens"})


def test_apply_is_a_forced_server_side_apply_under_a_field_manager(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    wf = {"apiVersion": WORKFLOW.api_version, "kind": "Workflow", "metadata": {"name": "train-v1", "namespace": NS}}
    fn = fake(monkeypatch, kube, "patch_namespaced_custom_object", wf)
    kube.apply(WORKFLOW, wf)
    kube.apply(WORKFLOW, wf, field_manager="fm-operator-traffic")
    (args, kw), (_, kw2) = fn.calls
    assert args == ("argoproj.io", "v1alpha1", NS, "workflows", "train-v1", wf)
    assert kw == {"field_manager": "fm-operator", "force": True, "_content_type": "application/apply-patch+yaml"}
    assert kw2["field_manager"] == "fm-operator-traffic"


def _created(rv: str, *entries: tuple[str, str, str]) -> dict[str, Any]:
    """A Workflow as the API server answers a create: managedFields (manager, operation, subresource)."""
    fields = [{"manager": m, "operation": op, "apiVersion": "argoproj.io/v1alpha1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}},
               **({"subresource": sub} if sub else {})} for m, op, sub in entries]
    return {"apiVersion": WORKFLOW.api_version, "kind": "Workflow", "spec": {},
            "metadata": {"name": "train-v1", "namespace": NS, "resourceVersion": rv, "managedFields": fields}}


def test_create_fails_when_the_name_is_taken_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    wf = {"apiVersion": WORKFLOW.api_version, "kind": "Workflow", "metadata": {"name": "train-v1", "namespace": NS}, "spec": {}}
    fn = fake(monkeypatch, kube, "create_namespaced_custom_object",
              status(409, 'workflows.argoproj.io "train-v1" already exists', "AlreadyExists", "train-v1", "workflows"))
    patch = fake(monkeypatch, kube, "patch_namespaced_custom_object", {})
    with pytest.raises(AlreadyExists, match=f"create Workflow {NS}/train-v1: already exists") as err:
        kube.create(WORKFLOW, wf, field_manager="fm-operator-traffic")
    assert err.value.status == 409 and isinstance(err.value, Conflict)
    assert fn.calls == [(("argoproj.io", "v1alpha1", NS, "workflows", wf), {"field_manager": "fm-operator-traffic"})]
    assert patch.calls == [], "nothing but the create: no apply, which would take the existing object over"


def test_create_hands_the_fields_it_wrote_to_server_side_apply(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    """The API server records a create as an Update: the manager's entry becomes its Apply entry, against the
    resourceVersion created (another writer in between: read again), so later applies can drop those fields."""
    wf = {"apiVersion": WORKFLOW.api_version, "kind": "Workflow", "metadata": {"name": "train-v1", "namespace": NS}, "spec": {}}
    fake(monkeypatch, kube, "create_namespaced_custom_object", _created("5", ("fm-operator", "Update", "")))
    stale = status(409, 'Operation cannot be fulfilled on workflows.argoproj.io "train-v1": the object has been modified', "Conflict",
                   "train-v1", "workflows")
    done = _created("7", ("fm-operator", "Apply", ""), ("argo-controller", "Update", "status"))
    patch = fake(monkeypatch, kube, "patch_namespaced_custom_object", stale, done)
    fake(monkeypatch, kube, "get_namespaced_custom_object", _created("6", ("fm-operator", "Update", ""), ("argo-controller", "Update", "status")))
    assert kube.create(WORKFLOW, wf) == done
    (args1, kw1), (args2, kw2) = patch.calls
    assert args1[:5] == args2[:5] == ("argoproj.io", "v1alpha1", NS, "workflows", "train-v1")
    assert kw1 == kw2 == {"field_manager": "fm-operator", "_content_type": "application/merge-patch+json"}
    applied = _created("5", ("fm-operator", "Apply", ""))["metadata"]["managedFields"]
    assert args1[5] == {"metadata": {"resourceVersion": "5", "managedFields": applied}}
    assert args2[5]["metadata"] == {"resourceVersion": "6", "managedFields": _created(
        "6", ("fm-operator", "Apply", ""), ("argo-controller", "Update", "status"))["metadata"]["managedFields"]}, "the other writer's entry is kept"


@pytest.mark.parametrize("entries", [(), (("fm-operator", "Apply", ""),), (("fm-operator", "Update", ""), ("fm-operator", "Apply", "")),
                                     (("someone", "Update", ""),)], ids=["none", "applied-already", "both", "another-manager"])
def test_create_leaves_managed_fields_alone_when_there_is_nothing_to_hand_over(monkeypatch: pytest.MonkeyPatch, kube: Kube,
                                                                                entries: tuple[tuple[str, str, str], ...]) -> None:
    wf = {"apiVersion": WORKFLOW.api_version, "kind": "Workflow", "metadata": {"name": "train-v1", "namespace": NS}, "spec": {}}
    fake(monkeypatch, kube, "create_namespaced_custom_object", _created("5", *entries))
    patch = fake(monkeypatch, kube, "patch_namespaced_custom_object", {})
    assert kube.create(WORKFLOW, wf) == _created("5", *entries)
    assert patch.calls == []


def test_create_gives_up_handing_over_after_three_conflicts(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    wf = {"apiVersion": WORKFLOW.api_version, "kind": "Workflow", "metadata": {"name": "train-v1", "namespace": NS}, "spec": {}}
    fake(monkeypatch, kube, "create_namespaced_custom_object", _created("5", ("fm-operator", "Update", "")))
    fake(monkeypatch, kube, "get_namespaced_custom_object", _created("6", ("fm-operator", "Update", "")))
    patch = fake(monkeypatch, kube, "patch_namespaced_custom_object", status(409, "the object has been modified", "Conflict", "train-v1"))
    with pytest.raises(Conflict, match="fields of Workflow team-a/train-v1 that fm-operator created") as err:
        kube.create(WORKFLOW, wf)
    assert type(err.value) is Conflict and err.value.retry and len(patch.calls) == 3


def test_delete_says_whether_there_was_anything_to_delete(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    fn = fake(monkeypatch, kube, "delete_namespaced_custom_object", {}, MISSING, FORBIDDEN)
    assert kube.delete(WORKFLOW, NS, "train-v1") is True
    assert fn.calls[0][1] == {"propagation_policy": "Background"}
    assert kube.delete(WORKFLOW, NS, "train-v1") is False
    with pytest.raises(KubeError, match="delete on workflows.argoproj.io"):
        kube.delete(WORKFLOW, NS, "train-v1")


def test_replace_status_sends_the_resource_version_read_and_a_conflict_is_its_own_error(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    body = {"apiVersion": ROLLOUT.api_version, "kind": "Rollout", "metadata": {"name": "reco", "namespace": NS, "resourceVersion": "42", "uid": "u"},
            "spec": {"x": 1}, "status": {"phase": "Pending"}}
    conflict = status(409, 'Operation cannot be fulfilled on rollouts.fmops.dev "reco"', "Conflict", "reco", "rollouts")
    fn = fake(monkeypatch, kube, "replace_namespaced_custom_object_status", {}, conflict)
    kube.replace_status(ROLLOUT, body, {"phase": "Progressing"})
    args, _ = fn.calls[0]
    assert args[:5] == ("fmops.dev", "v1alpha1", NS, "rollouts", "reco")
    assert args[5] == {"apiVersion": ROLLOUT.api_version, "kind": "Rollout", "status": {"phase": "Progressing"},
                       "metadata": {"name": "reco", "namespace": NS, "resourceVersion": "42"}}
    with pytest.raises(Conflict) as err:
        kube.replace_status(ROLLOUT, body, {"phase": "Progressing"})
    assert err.value.retry and err.value.status == 409


def test_an_event_names_the_object_it_is_about(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    fn = fake(monkeypatch, kube, "create_namespaced_event", None, status(403, "forbidden", "Forbidden"))
    body = {"apiVersion": ROLLOUT.api_version, "kind": "Rollout", "metadata": {"name": "reco", "namespace": NS, "uid": "u", "resourceVersion": "7"}}
    kube.event(body, "Warning", "RolledBack", "x" * 2000)
    namespace, ev = fn.calls[0][0]
    assert namespace == NS and (ev.type, ev.reason, len(ev.message)) == ("Warning", "RolledBack", 1024)
    assert (ev.involved_object.kind, ev.involved_object.name, ev.involved_object.uid) == ("Rollout", "reco", "u")
    with pytest.raises(KubeError, match="create Event RolledBack about Rollout team-a/reco: not allowed .* create on events"):
        kube.event(body, "Warning", "RolledBack", "m")


def pod(name: str, node: str) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(name=name, annotations={"workflows.argoproj.io/node-id": node}))


def test_pod_log_tail_reads_the_pod_with_the_annotations_asked_for(monkeypatch: pytest.MonkeyPatch, kube: Kube) -> None:
    pods = fake(monkeypatch, kube, "list_namespaced_pod", SimpleNamespace(items=[pod("w-1", "n1"), pod("w-2", "n2")]))
    logs = fake(monkeypatch, kube, "read_namespaced_pod_log", "last\nlines\n", status(404, 'pods "w-2" not found', "NotFound", "w-2", "pods"))
    labels, wanted = {"workflows.argoproj.io/workflow": "w"}, {"workflows.argoproj.io/node-id": "n2"}
    assert kube.pod_log_tail(NS, labels, wanted, container="main", lines=5) == "last\nlines\n"
    assert pods.calls[0] == ((NS,), {"label_selector": "workflows.argoproj.io/workflow=w"})
    assert logs.calls[0] == (("w-2", NS), {"container": "main", "tail_lines": 5})
    assert kube.pod_log_tail(NS, labels, wanted) == "", "the pod went in between"
    assert kube.pod_log_tail(NS, labels, {"workflows.argoproj.io/node-id": "n9"}) == "", "no such pod"


# ---------------------------------------------------------------- the traffic providers' I/O keeps its messages
@pytest.fixture
def custom(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Any], Any]:
    """Fakes one CustomObjectsApi method for every client (the providers' I/O builds its own)."""
    def set_(method: str, *results: Any) -> Any:
        fn = answers(*results)
        monkeypatch.setattr(client.CustomObjectsApi, method, lambda self, *a, **kw: fn(*a, **kw))
        return fn
    return set_


def route(name: str = "reco") -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": name, "namespace": NS}, "spec": {}}


def test_a_kind_the_server_does_not_know_says_what_to_install(custom: Callable[..., Any]) -> None:
    custom("patch_namespaced_custom_object", plain(404, "404 page not found"))
    custom("get_namespaced_custom_object", plain(404, "404 page not found"))
    p, refs = PROVIDERS["gatewayAPI"], [ObjectRef("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes", "reco")]
    for attempt in (lambda: traffic.apply(client.ApiClient(), p, refs, [route()]), lambda: traffic.read(client.ApiClient(), p, NS, refs)):
        with pytest.raises(traffic.TrafficError, match="does not serve httproutes.gateway.networking.k8s.io/v1: install the Gateway API CRDs") as err:
            attempt()
        assert not err.value.retry


def test_kserve_does_not_create_the_inferenceservice(custom: Callable[..., Any]) -> None:
    custom("get_namespaced_custom_object", status(404, 'inferenceservices.serving.kserve.io "reco" not found', "NotFound", "reco", "inferenceservices"))
    patch = custom("patch_namespaced_custom_object", {})
    p = PROVIDERS["kserve"]
    ref = ObjectRef.of(kinds.INFERENCE_SERVICE, "reco")
    obj = {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": {"name": "reco", "namespace": NS}, "spec": {}}
    with pytest.raises(traffic.TrafficError, match=f"apply InferenceService {NS}/reco: not found \\(kserve writes only some fields") as err:
        traffic.apply(client.ApiClient(), p, [ref], [obj])
    assert err.value.retry and patch.calls == []


def test_the_schema_rejection_and_unreachable_server_keep_their_retry(custom: Callable[..., Any]) -> None:
    custom("patch_namespaced_custom_object", status(422, 'HTTPRoute.gateway.networking.k8s.io "reco" is invalid: spec.rules[0].filters[0].'
                                                         'requestMirror.percent: Invalid value: 101', "Invalid"), CANNOT_CONNECT)
    custom("get_namespaced_custom_object", CANNOT_CONNECT)
    p, refs = PROVIDERS["gatewayAPI"], [ObjectRef("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes", "reco")]
    with pytest.raises(traffic.TrafficError, match=f"apply HTTPRoute {NS}/reco: rejected by the schema: .*requestMirror.percent") as err:
        traffic.apply(client.ApiClient(), p, refs, [route()])
    assert not err.value.retry
    with pytest.raises(traffic.TrafficError, match="API server unreachable") as err:
        traffic.apply(client.ApiClient(), p, refs, [route()])
    assert err.value.retry
    with pytest.raises(traffic.TrafficError, match=f"get HTTPRoute {NS}/reco: API server unreachable") as err:
        traffic.read(client.ApiClient(), p, NS, refs)
    assert err.value.retry and isinstance(err.value, KubeError)


def test_read_gives_none_for_an_object_not_written_yet(custom: Callable[..., Any]) -> None:
    custom("get_namespaced_custom_object", status(404, 'httproutes.gateway.networking.k8s.io "reco" not found', "NotFound", "reco", "httproutes"))
    p, refs = PROVIDERS["gatewayAPI"], [ObjectRef("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes", "reco")]
    assert traffic.read(client.ApiClient(), p, NS, refs) == [None]
