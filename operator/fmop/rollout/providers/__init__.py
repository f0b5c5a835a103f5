"""Traffic providers, one file each, behind `TrafficProvider` (base.py); I/O in `providers.kube`.

    provider = provider_for(spec.trafficRouting)
    refs = provider.objects(rollout, spec.trafficRouting)                      # pure
    objs = provider.render(rollout, spec.trafficRouting, set_traffic)          # pure
    kube.apply(api, provider, refs, objs)                                      # create if absent, else server-side apply (fmop.kube)
    found = kube.read(api, provider, rollout.namespace, refs)
    observations.traffic = provider.observe(found)                             # pure
"""

from __future__ import annotations

from fmop.api.rollout import TrafficRouting
from fmop.rollout.providers.base import ObjectRef, RolloutRef, TrafficProvider, Unknown
from fmop.rollout.providers.gatewayapi import GatewayAPI
from fmop.rollout.providers.istio import Istio
from fmop.rollout.providers.kserve import KServe
from fmop.rollout.providers.traefik import Traefik

PROVIDERS: dict[str, TrafficProvider] = {p.name: p for p in (GatewayAPI(), Istio(), KServe(), Traefik())}


def provider_for(routing: TrafficRouting) -> TrafficProvider:
    """The provider spec.trafficRouting.provider names."""
    try:
        return PROVIDERS[routing.provider]
    except KeyError:
        raise ValueError(f"spec.trafficRouting.provider {routing.provider!r} is not one of {', '.join(sorted(PROVIDERS))}") from None


__all__ = ["PROVIDERS", "ObjectRef", "RolloutRef", "TrafficProvider", "Unknown", "provider_for"]
