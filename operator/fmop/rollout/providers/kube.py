"""The traffic providers' I/O: server-side apply what a provider rendered, read back what it names.

Through the one adapter (fmop.kube), whose error mapping names the object and the cause: a kind the
API server does not know says which CRDs to install (the provider's install hint), an object the
schema rejects carries the server's message (which names the field).
"""

from __future__ import annotations

from kubernetes import client

from fmop.kube import Kube, KubeError
from fmop.rollout.providers.base import Obj, ObjectRef, TrafficProvider


class TrafficError(KubeError):
    """A traffic object could not be written or read; the message names it and says why.

    `retry`: worth trying again (server unreachable, conflict) rather than a fix by a person."""

    def __init__(self, message: str, retry: bool, status: int | None = None) -> None:
        super().__init__(message, retry=retry, status=status)


def _traffic_error(err: KubeError) -> TrafficError:
    return TrafficError(str(err), err.retry, err.status)


def apply(api: client.ApiClient, provider: TrafficProvider, refs: list[ObjectRef], objects: list[Obj]) -> None:
    """Server-side apply each object (field manager provider.field_manager, force); stops at the first failure.

    `refs` are provider.objects(...), `objects` provider.render(...) for the same Rollout, in the same order.
    """
    if [(r.api_version, r.kind, r.name) for r in refs] != [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects]:
        raise ValueError(f"{provider.name}: render() and objects() disagree: {[str(r) for r in refs]}")
    kube = Kube(api, field_manager=provider.field_manager)
    for ref, obj in zip(refs, objects, strict=True):
        namespace = obj["metadata"]["namespace"]
        kind = ref.as_kind(provider.install_hint)
        try:
            # Not creating: apply would create it, with only our few fields.
            if not provider.creates and kube.get(kind, namespace, ref.name) is None:
                raise TrafficError(f"apply {ref.kind} {namespace}/{ref.name}: not found ({provider.name} writes only some fields of it; "
                                   "whatever creates it must run first)", retry=True, status=404)
            kube.apply(kind, obj)
        except TrafficError:
            raise
        except KubeError as err:
            raise _traffic_error(err) from err


def read(api: client.ApiClient, provider: TrafficProvider, namespace: str, refs: list[ObjectRef]) -> list[Obj | None]:
    """The objects as found, in order; None for one that does not exist."""
    kube = Kube(api, field_manager=provider.field_manager)
    try:
        return [kube.get(ref.as_kind(provider.install_hint), namespace, ref.name) for ref in refs]
    except KubeError as err:
        raise _traffic_error(err) from err
