"""The InferenceService of one revision, rendered and read back. Pure: no I/O.

One KServe InferenceService (serving.kserve.io/v1beta1, Triton, protocol v2) per revision, named by
`naming.isvc_name`, labelled with the Rollout and the revision, owned by the Rollout (so the real
garbage collector deletes it with the Rollout), written by server-side apply under one field manager.
"""

from __future__ import annotations

from typing import Any

from fmop.api.rollout import Serving, ServeTarget
from fmop.kinds import INFERENCE_SERVICE
from fmop.rollout import naming
from fmop.rollout.providers.base import RolloutRef
from fmop.rollout.types import InferenceServiceState, ModelRef

API_VERSION, KIND = INFERENCE_SERVICE.api_version, INFERENCE_SERVICE.kind


class StorageError(ValueError):
    """The model to serve has no artifact to point an InferenceService at; the message names the fix."""


def storage_uri(target: ServeTarget, serving: Serving, fm: dict[str, Any] | None) -> str:
    """spec.serving.storageUri if set, else the artifactUri of the FoundationModel version served.

    The version's artifact is the Triton model repository `fmrec export` wrote; adapters named in
    spec.model.adapters must be in it (the export bundles an FM version with its adapters)."""
    if serving.storageUri:
        return serving.storageUri
    version = target.foundationModel.version
    for v in ((fm or {}).get("status") or {}).get("versions") or []:
        if v.get("version") == version and v.get("artifactUri"):
            return str(v["artifactUri"])
    raise StorageError(f"spec.model.foundationModel: FoundationModel {target.foundationModel.name} has no artifactUri for version "
                       f"{version}; wait for its training to record one, or set spec.serving.storageUri")


def revision_uri(model: ModelRef, current: ServeTarget, current_uri: str, fm: dict[str, Any] | None,
                 found: dict[str, Any] | None) -> str | None:
    """The storageUri of one revision's InferenceService, or None when it cannot be known (then the
    object is left as it is).

    A revision is immutable: an InferenceService that exists keeps the artifact it was created with,
    whatever spec.model says now. Otherwise the artifact is that of the revision's own model: the
    current spec's (current_uri, which honours spec.serving.storageUri) when the revision serves
    what the spec names, else its FoundationModel version's artifactUri. The stable of a canary
    rollout must never be pointed at the canary's artifact."""
    if found is not None:
        uri = (((found.get("spec") or {}).get("predictor") or {}).get("model") or {}).get("storageUri")
        if uri:
            return str(uri)
    if model == ModelRef.of(current):
        return current_uri or None
    if model.foundation_model != current.foundationModel.name:
        return None
    for v in ((fm or {}).get("status") or {}).get("versions") or []:
        if v.get("version") == model.version and v.get("artifactUri"):
            return str(v["artifactUri"])
    return None


def render_isvc(ref: RolloutRef, revision: int, serving: Serving, uri: str) -> dict[str, Any]:
    """The complete InferenceService of `revision`, for server-side apply."""
    model: dict[str, Any] = {"modelFormat": {"name": serving.runtime}, "protocolVersion": serving.protocolVersion, "storageUri": uri}
    resources = serving.resources.model_dump(exclude_defaults=True)
    if resources:
        model["resources"] = resources
    meta: dict[str, Any] = {"name": naming.isvc_name(ref.name, revision), "namespace": ref.namespace, "labels": ref.labels(revision),
                            "ownerReferences": [ref.owner_reference()]}
    if serving.minReplicas == serving.maxReplicas:  # a fixed size: no HorizontalPodAutoscaler for KServe to create
        meta["annotations"] = {"serving.kserve.io/autoscalerClass": "none"}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {"predictor": {"minReplicas": serving.minReplicas, "maxReplicas": serving.maxReplicas,
                               "timeout": serving.timeoutSeconds, "model": model,
                               "labels": ref.labels(revision)}},  # on the predictor pods too: for Prometheus and kubectl
    }


def observe_isvc(obj: dict[str, Any]) -> InferenceServiceState | None:
    """An InferenceService as found -> its revision and readiness (None if it is not one of ours)."""
    meta = obj.get("metadata") or {}
    try:
        revision = int((meta.get("labels") or {}).get(naming.LABEL_REVISION, ""))
    except ValueError:
        return None
    if meta.get("deletionTimestamp"):
        return InferenceServiceState(revision, False, "being deleted")
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None:
        return InferenceServiceState(revision, False, "no Ready condition yet (the KServe controller has not reconciled it)")
    if ready.get("status") == "True":
        return InferenceServiceState(revision, True)
    why = ready.get("message") or ready.get("reason") or "Ready is " + str(ready.get("status"))
    return InferenceServiceState(revision, False, str(why))
