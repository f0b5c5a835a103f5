"""The traffic providers' I/O: server-side apply what a provider rendered, read back what it names.

Errors name the object and the cause: a kind the API server does not know says which CRDs to install,
an object the schema rejects carries the server's message (which names the field).
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fmop.rollout.providers.base import Obj, ObjectRef, TrafficProvider


class TrafficError(RuntimeError):
    """A traffic object could not be written or read; the message names it and says why."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry  # worth trying again (server unreachable, conflict) rather than a fix by a person


def _fail(action: str, ref: ObjectRef, namespace: str, provider: TrafficProvider, err: ApiException | OSError) -> TrafficError:
    where = f"{action} {ref.kind} {namespace}/{ref.name}"
    if isinstance(err, OSError):  # urllib3 connection errors derive from OSError
        return TrafficError(f"{where}: API server unreachable: {err}", retry=True)
    message = _message(err)
    if err.status == 404 and not _object_missing(err, ref):
        return TrafficError(f"{where}: the API server does not serve {ref.plural}.{ref.api_version}: {provider.install_hint}", retry=False)
    if err.status == 404:
        return TrafficError(f"{where}: not found ({provider.name} writes only some fields of it; whatever creates it must run first)", retry=True)
    # Server-side apply checks field types against the schema before validation proper, and answers a
    # mismatch (a string where an integer belongs) with HTTP 500 "failed to create typed patch object".
    if err.status == 422 or (err.status == 500 and "failed to create typed patch object" in message):
        return TrafficError(f"{where}: rejected by the schema: {message}", retry=False)
    if err.status in (401, 403):
        return TrafficError(f"{where}: not allowed (HTTP {err.status}): give the operator's ServiceAccount access to {ref.plural}.{ref.group}: {message}",
                            retry=False)
    return TrafficError(f"{where}: HTTP {err.status} {err.reason}: {message}", retry=True)


def _object_missing(err: ApiException, ref: ObjectRef) -> bool:
    """A 404 for the object itself (`httproutes.gateway.networking.k8s.io "reco" not found`), not for its
    kind: an unknown group/version answers "404 page not found", an unknown resource "the server could
    not find the requested resource"."""
    return f'"{ref.name}" not found' in _message(err)


def _message(err: ApiException) -> str:
    try:
        body: Any = json.loads(err.body or "")
        return str(body.get("message", err.body))
    except (ValueError, AttributeError):
        return str(err.body or err.reason)


def apply(api: client.ApiClient, provider: TrafficProvider, refs: list[ObjectRef], objects: list[Obj]) -> None:
    """Server-side apply each object (field manager provider.field_manager, force); stops at the first failure.

    `refs` are provider.objects(...), `objects` provider.render(...) for the same Rollout, in the same order.
    """
    if [(r.api_version, r.kind, r.name) for r in refs] != [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]:
        raise ValueError(f"{provider.name}: render() and objects() disagree: {[str(r) for r in refs]}")
    custom = client.CustomObjectsApi(api)
    for ref, obj in zip(refs, objects, strict=True):
        namespace = obj["metadata"]["namespace"]
        try:
            if not provider.creates:  # apply would create it, with only our few fields
                custom.get_namespaced_custom_object(ref.group, ref.version, namespace, ref.plural, ref.name)
            custom.patch_namespaced_custom_object(ref.group, ref.version, namespace, ref.plural, ref.name, obj,
                                                  field_manager=provider.field_manager, force=True,
                                                  _content_type="application/apply-patch+yaml")
        except (ApiException, OSError) as err:
            raise _fail("apply", ref, namespace, provider, err) from err


def read(api: client.ApiClient, provider: TrafficProvider, namespace: str, refs: list[ObjectRef]) -> list[Obj | None]:
    """The objects as found, in order; None for one that does not exist."""
    custom = client.CustomObjectsApi(api)
    found: list[Obj | None] = []
    for ref in refs:
        try:
            obj: Any = custom.get_namespaced_custom_object(ref.group, ref.version, namespace, ref.plural, ref.name)
            found.append(dict(obj))
        except ApiException as err:
            if err.status == 404 and _object_missing(err, ref):
                found.append(None)
                continue
            raise _fail("read", ref, namespace, provider, err) from err
        except OSError as err:
            raise _fail("read", ref, namespace, provider, err) from err
    return found
