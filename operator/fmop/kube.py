"""The one Kubernetes adapter of the operator (apart from kopf itself): get, list, apply, create, delete,
replace status, post an Event, read a pod's log tail; every failure mapped the one way `error_for` says.

    kube = Kube(api_client(), field_manager=naming.FIELD_MANAGER)
    fm = kube.get(kinds.FOUNDATION_MODEL, "team-a", "movielens")          # None: it does not exist
    kube.apply(kinds.WORKFLOW, workflow)                                   # server-side apply, forced
    kube.create(kind, route)                                               # only if absent; AlreadyExists otherwise
    kube.replace_status(kinds.ROLLOUT, body, status)                      # Conflict: body is stale

A failure is a `KubeError` whose message names the call, the object and the fix, and whose `retry`
says whether trying again can help (an unreachable or overloaded API server) or a person must act
(RBAC, a missing CRD, an object the schema rejects). Kinds are typed references (fmop.kinds).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fmop.kinds import EVENT, POD, Kind

Obj = dict[str, Any]
Objs = list[Obj]
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(RuntimeError):
    """An API call failed; the message names the call and the object and says why (and what to do)."""

    def __init__(self, message: str, *, retry: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retry = retry  # worth trying again (server unreachable or busy, conflict) rather than a fix by a person
        self.status = status  # the HTTP status; None when no answer came


class NotFound(KubeError):
    """The object named (or its namespace) does not exist."""


class NotInstalled(KubeError):
    """The API server does not serve the kind at all: its CRDs are not installed."""


class Conflict(KubeError):
    """HTTP 409: the object changed since it was read (a stale resourceVersion); read it again."""


class AlreadyExists(Conflict):
    """HTTP 409 to a create: an object of that name exists (it may have been created since it was read)."""


@dataclass(frozen=True)
class Call:
    """One API call, as an error message names it, with the RBAC verb it needs."""

    what: str  # "get Workflow ns/x", "list Workflow in ns (a=b)": how the message starts
    kind: Kind
    verb: str  # the RBAC verb(s) the call needs
    name: str = ""  # the object named, "" for a list: a 404 that names it means "does not exist"
    subresource: str = ""  # "status", "log"

    @property
    def resource(self) -> str:
        return f"{self.kind.resource}/{self.subresource}" if self.subresource else self.kind.resource


def error_for(call: Call, err: Exception) -> KubeError:
    """The one error mapping: an API failure (ApiException, or a connection error) -> a KubeError."""
    if not isinstance(err, ApiException) or not err.status:  # no HTTP answer (status 0: TLS failed)
        why = err.reason if isinstance(err, ApiException) else err
        return KubeError(f"{call.what}: API server unreachable: {why}", retry=True)
    status, message = int(err.status), server_message(err)
    if status in (401, 403):
        return KubeError(f"{call.what}: not allowed (HTTP {status}): give the operator's ServiceAccount {call.verb} on {call.resource}: "
                         f"{message}", retry=False, status=status)
    if status == 404 and call.verb != "list" and _names_what_is_missing(err, call.name):
        return NotFound(f"{call.what}: not found: {message}", retry=True, status=status)
    if status == 404:
        return NotInstalled(f"{call.what}: the API server does not serve {call.kind.plural}.{call.kind.api_version}: "
                            f"{call.kind.install or 'install the API that serves it'}", retry=False, status=status)
    if status == 409 and _reason(err) == "AlreadyExists":
        return AlreadyExists(f"{call.what}: already exists (HTTP 409): {message}", retry=True, status=status)
    if status == 409:
        return Conflict(f"{call.what}: conflict (HTTP 409): {message}", retry=True, status=status)
    # Server-side apply checks field types against the schema before validation proper, and answers a
    # mismatch (a string where an integer belongs) with HTTP 500 "failed to create typed patch object".
    if status == 422 or (status == 500 and "failed to create typed patch object" in message):
        return KubeError(f"{call.what}: rejected by the schema: {message}", retry=False, status=status)
    return KubeError(f"{call.what}: HTTP {status} {err.reason}: {message}", retry=True, status=status)


def server_message(err: ApiException) -> str:
    """The API server's own message (a Status object's `message`, which names the field), else the body."""
    body: Any = err.body.decode(errors="replace") if isinstance(err.body, bytes) else err.body
    try:
        status: Any = json.loads(body or "")
        return str(status.get("message", body))
    except (ValueError, AttributeError):
        return str(body or err.reason)


def _reason(err: ApiException) -> str:
    """The Status object's machine-readable `reason` ("AlreadyExists", "Conflict"), "" when there is none."""
    try:
        status: Any = json.loads(err.body or "")
        return str(status.get("reason") or "")
    except (ValueError, AttributeError, TypeError):
        return ""


def _names_what_is_missing(err: ApiException, name: str) -> bool:
    """A 404 for the object itself (`workflows.argoproj.io "x" not found`) or its namespace, not for its kind:
    an unknown group/version answers "404 page not found", an unknown resource "the server could not find
    the requested resource", neither with a name in the Status details. (A list names no object: its 404
    is always the kind.)"""
    if name and f'"{name}" not found' in server_message(err):
        return True
    try:
        details = json.loads(err.body or "").get("details") or {}
    except (ValueError, AttributeError, TypeError):
        return False
    return isinstance(details, dict) and bool(details.get("name"))


_UNREACHABLE = (OSError, urllib3.exceptions.HTTPError)  # refused, reset, timed out, retries exhausted


def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    """Namespaced objects of any kind through one API client; errors as `error_for` maps them."""

    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self.api = api
        self.field_manager = field_manager  # server-side apply's, unless a call names another
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    def _call(self, call: Call, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ApiException, *_UNREACHABLE) as err:
            raise error_for(call, err) from err

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        """The object, or None when it does not exist."""
        try:
            obj = self._call(Call(f"get {kind.kind} {namespace}/{name}", kind, "get", name), self._custom.get_namespaced_custom_object,
                             kind.group, kind.version, namespace, kind.plural, name)
        except NotFound:
            return None
        return dict(obj)

    def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> Objs:
        """The objects in `namespace` carrying all of `labels`."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        got = self._call(Call(f"list {kind.kind} in {namespace} ({selector})", kind, "list"), self._custom.list_namespaced_custom_object,
                         kind.group, kind.version, namespace, kind.plural, label_selector=selector)
        return [dict(item) for item in (got or {}).get("items") or []]

    def list_all(self, kind: Kind) -> Objs:
        """The objects of `kind` in every namespace (needs list cluster-wide)."""
        got = self._call(Call(f"list {kind.kind} in all namespaces", kind, "list"), self._custom.list_cluster_custom_object,
                         kind.group, kind.version, kind.plural)
        return [dict(item) for item in (got or {}).get("items") or []]

    def apply(self, kind: Kind, obj: Obj, field_manager: str | None = None) -> Obj:
        """Server-side apply `obj` (complete: what it leaves out, this field manager gives up), forcing conflicts."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        got = self._call(Call(f"apply {kind.kind} {ns}/{name}", kind, "create and patch", name), self._custom.patch_namespaced_custom_object,
                         kind.group, kind.version, ns, kind.plural, name, obj,
                         field_manager=field_manager or self.field_manager, force=True, _content_type=APPLY_PATCH)
        return dict(got or {})

    def create(self, kind: Kind, obj: Obj, field_manager: str | None = None) -> Obj:
        """Create `obj` only if no object of its name exists: `AlreadyExists` (nothing written) when one does.

        Server-side apply cannot say "create, never update", so this is a POST. The API server records a create
        as an Update of the field manager, whose fields a later apply by the same manager would share and so never
        remove; they are handed to the manager's Apply entry (`_as_applied`), and from then on the object is the
        manager's exactly as if an apply had created it."""
        manager = field_manager or self.field_manager
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        created = self._call(Call(f"create {kind.kind} {ns}/{name}", kind, "create", name), self._custom.create_namespaced_custom_object,
                             kind.group, kind.version, ns, kind.plural, obj, field_manager=manager)
        return self._as_applied(kind, ns, name, dict(created or {}), manager)

    def _as_applied(self, kind: Kind, ns: str, name: str, obj: Obj, manager: str, attempts: int = 3) -> Obj:
        """Turn `manager`'s Update entry in managedFields into its Apply entry, against the resourceVersion read
        (another writer in between, a controller writing status say: read again and retry; `Conflict` after
        `attempts`). Nothing to do when there is no such entry or the manager has an Apply entry already."""
        call = Call(f"hand the fields of {kind.kind} {ns}/{name} that {manager} created to its server-side apply", kind, "patch", name)
        for attempt in range(attempts):
            meta = obj.get("metadata") or {}
            entries = [m for m in meta.get("managedFields") or [] if isinstance(m, dict)]
            ours = [m for m in entries if m.get("manager") == manager and not m.get("subresource")]
            if [m.get("operation") for m in ours] != ["Update"]:
                return obj
            fields = [{**m, "operation": "Apply"} if m is ours[0] else m for m in entries]
            try:
                got = self._call(call, self._custom.patch_namespaced_custom_object, kind.group, kind.version, ns, kind.plural, name,
                                 {"metadata": {"resourceVersion": meta.get("resourceVersion"), "managedFields": fields}},
                                 field_manager=manager, _content_type=MERGE_PATCH)
            except Conflict:
                again = self.get(kind, ns, name)
                if again is None or attempt == attempts - 1:
                    raise
                obj = again
                continue
            return dict(got or {})
        return obj

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """Delete (dependents in the background); False when it was gone already."""
        try:
            self._call(Call(f"delete {kind.kind} {namespace}/{name}", kind, "delete", name), self._custom.delete_namespaced_custom_object,
                       kind.group, kind.version, namespace, kind.plural, name, propagation_policy="Background")
        except NotFound:
            return False
        return True

    def replace_status(self, kind: Kind, body: Obj, status: Obj) -> Obj:
        """Replace the status of `body` (the object as read) whole, with the resourceVersion read:
        `Conflict` when someone wrote in between."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        obj = {"apiVersion": body["apiVersion"], "kind": body["kind"], "status": status,
               "metadata": {"name": name, "namespace": ns, "resourceVersion": meta["resourceVersion"]}}
        got = self._call(Call(f"update status of {kind.kind} {ns}/{name}", kind, "update", name, "status"),
                         self._custom.replace_namespaced_custom_object_status, kind.group, kind.version, ns, kind.plural, name, obj)
        return dict(got or {})

    def event(self, body: Obj, type_: str, reason: str, message: str, component: str = "fm-operator") -> None:
        """A core/v1 Event about `body` (type_ Normal or Warning)."""
        meta = body["metadata"]
        now = datetime.now(UTC)
        ev = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(api_version=body["apiVersion"], kind=body["kind"], name=meta["name"],
                                                     namespace=meta["namespace"], uid=meta["uid"],
                                                     resource_version=meta.get("resourceVersion")),
            reason=reason, message=message[:1024], type=type_, count=1,
            first_timestamp=now, last_timestamp=now, source=client.V1EventSource(component=component),
            reporting_component=component, reporting_instance=component)
        self._call(Call(f"create Event {reason} about {body['kind']} {meta['namespace']}/{meta['name']}", EVENT, "create"),
                   self._core.create_namespaced_event, meta["namespace"], ev)

    def pod_log_tail(self, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None,
                     container: str = "main", lines: int = 20) -> str:
        """The last `lines` of `container`'s log in the first pod with `labels` and `annotations`; "" when there is none."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = self._call(Call(f"list Pod in {namespace} ({selector})", POD, "list"), self._core.list_namespaced_pod, namespace,
                          label_selector=selector)
        for pod in pods.items or []:
            found = pod.metadata.annotations or {}
            if all(found.get(k) == v for k, v in (annotations or {}).items()):
                name = pod.metadata.name
                try:
                    text = self._call(Call(f"read log of Pod {namespace}/{name}", POD, "get", name, "log"),
                                      self._core.read_namespaced_pod_log, name, namespace, container=container, tail_lines=lines)
                except NotFound:  # the pod went in between
                    return ""
                return str(text or "")
        return ""
