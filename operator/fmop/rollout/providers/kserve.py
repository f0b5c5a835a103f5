"""KServe: `spec.predictor.canaryTrafficPercent` on one InferenceService, named after the Rollout.

KServe splits traffic inside a single InferenceService: after its spec changes, the newest revision
gets canaryTrafficPercent and the previously rolled-out one the rest. KServe honours
canaryTrafficPercent only in **Serverless** (Knative) mode; in Standard (raw Deployment) mode, the
mode of the local node, the field is accepted and ignored, so this provider is proven here by the
real CRD's schema only. It cannot mirror: spec.strategy.shadow is rejected with provider kserve (a
CEL rule on the Rollout CRD).

This provider writes only that one field (plus the Rollout's label, ownerReference and an annotation
naming the canary revision) with a field manager of its own, `fm-operator-traffic`, so that
server-side apply never takes away the fields the serving side writes to the same object; it does
not create the InferenceService (`creates = False`), and, like every provider, it writes to one only
when it is the Rollout's: whoever creates it hands it over with the annotation
`fmops.dev/adopt: <Rollout name>` (base.holder), after which the Rollout owns it (ownerReference). The serving side must, for provider kserve,
keep that one InferenceService serving the canary revision's model while a canary is in flight and
the stable's otherwise. Mapping of SetTraffic:
- a canary revision: canaryTrafficPercent = canary weight (0 sends everything back to the
  previously rolled-out revision: KServe's rollback);
- no canary: canaryTrafficPercent = 100 (the newest revision, the stable, serves all).
"""

from __future__ import annotations

from typing import ClassVar

from fmop.api.rollout import TrafficRouting
from fmop.kinds import INFERENCE_SERVICE
from fmop.rollout import naming
from fmop.rollout.providers.base import UNKNOWN, Obj, ObjectRef, RolloutRef, TrafficProvider, Unknown, check, dig, supports_buckets
from fmop.rollout.types import ObservedTraffic, SetTraffic

API_VERSION = INFERENCE_SERVICE.api_version
CANARY_REVISION_ANNOTATION = "fmops.dev/canary-revision"


class KServe(TrafficProvider):
    name: ClassVar[str] = "kserve"
    install_hint: ClassVar[str] = INFERENCE_SERVICE.install
    field_manager: ClassVar[str] = f"{naming.FIELD_MANAGER}-traffic"
    creates: ClassVar[bool] = False

    def objects(self, rollout: RolloutRef, routing: TrafficRouting) -> list[ObjectRef]:
        return [ObjectRef.of(INFERENCE_SERVICE, naming.traffic_object_name(rollout.name), rollout)]

    def render(self, rollout: RolloutRef, routing: TrafficRouting, t: SetTraffic) -> list[Obj]:
        _, canary_weight = check(t)
        if t.mirror_percent:
            raise ValueError(f"provider kserve cannot mirror traffic (asked to mirror {t.mirror_percent}%): remove spec.strategy.shadow")
        if t.buckets is not None:
            raise ValueError(supports_buckets(routing) or "provider kserve cannot route by header")
        (ref,) = self.objects(rollout, routing)
        metadata = rollout.metadata(ref.name)
        if t.canary_revision is not None:
            metadata["annotations"] = {CANARY_REVISION_ANNOTATION: str(t.canary_revision)}
        percent = canary_weight if t.canary_revision is not None else 100
        return [{"apiVersion": API_VERSION, "kind": INFERENCE_SERVICE.kind, "metadata": metadata,
                 "spec": {"predictor": {"canaryTrafficPercent": percent}}}]

    def observe(self, found: list[Obj | None]) -> ObservedTraffic | Unknown:
        obj = found[0] if found else None
        if obj is None:
            return UNKNOWN
        percent = dig(obj, "spec", "predictor", "canaryTrafficPercent")
        if percent is not None and (not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100):
            return UNKNOWN
        canary = dig(obj, "metadata", "annotations", CANARY_REVISION_ANNOTATION)
        if canary is None:  # no canary: everything on the newest revision, the stable
            return ObservedTraffic(canary_weight=0, mirror_percent=0) if percent in (None, 100) else UNKNOWN
        if not isinstance(canary, str) or not canary.isdigit():
            return UNKNOWN
        return ObservedTraffic(canary_weight=100 if percent is None else percent, mirror_percent=0, canary_revision=int(canary))
