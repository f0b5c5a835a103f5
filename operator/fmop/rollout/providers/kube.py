"""The traffic providers' I/O: write what a provider rendered, read back what it names.

Through the one adapter (fmop.kube), whose error mapping names the object and the cause: a kind the
API server does not know says which CRDs to install (the provider's install hint), an object the
schema rejects carries the server's message (which names the field).

Neither reads nor writes an object that is not its Rollout's (base.holder): both raise ForeignObject,
naming the object, who holds it and the fix, before anything is written. An object that does not exist
is created with a create that fails when the name is taken, never with an apply (which creates or
updates): another writer that creates the same name in the instant between the read and the write keeps
its object, which is then read and judged like any other (ForeignObject unless it is the Rollout's). The
first write to an object handed over with the adopt annotation carries the resourceVersion read, so an
annotation taken away in between makes it a conflict, not a takeover. Every later write is a forced
server-side apply under the provider's field manager, which owns every field it wrote, the created ones too.
"""

from __future__ import annotations

import copy

from kubernetes import client

from fmop.kube import AlreadyExists, Kube, KubeError
from fmop.rollout.providers.base import Obj, ObjectRef, TrafficProvider, holder, refusal


class TrafficError(KubeError):
    """A traffic object could not be written or read; the message names it and says why.

    `retry`: worth trying again (server unreachable, conflict) rather than a fix by a person."""

    def __init__(self, message: str, retry: bool, status: int | None = None) -> None:
        super().__init__(message, retry=retry, status=status)


class ForeignObject(TrafficError):
    """The traffic object exists and is not the Rollout's (base.holder): nothing was read as its traffic or written.
    Not retried as such: a person must annotate the object or name another one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


def _traffic_error(err: KubeError) -> TrafficError:
    return TrafficError(str(err), err.retry, err.status)


def _refuse_foreign(provider: TrafficProvider, ref: ObjectRef, namespace: str, found: Obj) -> None:
    if ref.owner is None:
        return
    held = holder(found, ref.owner, provider.field_manager)
    if held is not None:
        raise ForeignObject(refusal(ref, namespace, held, provider, ref.owner))


def _adopting(ref: ObjectRef, found: Obj) -> bool:
    """Does this write hand the object over (it has no ownerReference of the Rollout yet)?"""
    owners = (found.get("metadata") or {}).get("ownerReferences") or []
    return ref.owner is not None and not any(isinstance(o, dict) and o.get("uid") == ref.owner.uid for o in owners)


def apply(api: client.ApiClient, provider: TrafficProvider, refs: list[ObjectRef], objects: list[Obj]) -> None:
    """Write each object (field manager provider.field_manager); stops at the first failure.

    `refs` are provider.objects(...), `objects` provider.render(...) for the same Rollout, in the same order.
    Each object is read first: ForeignObject when it is not the Rollout's (nothing written); created only if it
    still does not exist when written; otherwise server-side applied, forced.
    """
    if [(r.api_version, r.kind, r.name) for r in refs] != [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]:
        raise ValueError(f"{provider.name}: render() and objects() disagree: {[str(r) for r in refs]}")
    kube = Kube(api, field_manager=provider.field_manager)
    for ref, obj in zip(refs, objects, strict=True):
        try:
            _write(kube, provider, ref, obj)
        except TrafficError:
            raise
        except KubeError as err:
            raise _traffic_error(err) from err


def _write(kube: Kube, provider: TrafficProvider, ref: ObjectRef, obj: Obj) -> None:
    namespace = obj["metadata"]["namespace"]
    kind = ref.as_kind(provider.install_hint)
    if ref.owner is None and provider.creates:  # no Rollout to hold it for: create or update, as it is
        kube.apply(kind, obj)
        return
    found = kube.get(kind, namespace, ref.name)
    if found is None and not provider.creates:  # apply would create it, with only our few fields
        raise TrafficError(f"apply {ref.kind} {namespace}/{ref.name}: not found ({provider.name} writes only some fields of it; "
                           "whatever creates it must run first)", retry=True, status=404)
    if found is None:
        try:
            kube.create(kind, obj)  # fails if someone created it since the read: their object is not taken over
            return
        except AlreadyExists:
            found = kube.get(kind, namespace, ref.name)
        if found is None:
            raise TrafficError(f"create {ref.kind} {namespace}/{ref.name}: created and deleted again by another writer while "
                               "the operator wrote it; trying again", retry=True, status=409)
    _refuse_foreign(provider, ref, namespace, found)
    if _adopting(ref, found):  # the object as read, or a conflict
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = (found.get("metadata") or {}).get("resourceVersion")
    kube.apply(kind, obj)


def read(api: client.ApiClient, provider: TrafficProvider, namespace: str, refs: list[ObjectRef]) -> list[Obj | None]:
    """The objects as found, in order; None for one that does not exist. ForeignObject for one that is not the Rollout's."""
    kube = Kube(api, field_manager=provider.field_manager)
    try:
        found = [kube.get(ref.as_kind(provider.install_hint), namespace, ref.name) for ref in refs]
    except KubeError as err:
        raise _traffic_error(err) from err
    for ref, obj in zip(refs, found, strict=True):
        if obj is not None:
            _refuse_foreign(provider, ref, namespace, obj)
    return found
