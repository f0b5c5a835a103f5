"""Istio: one VirtualService (networking.istio.io/v1) whose single HTTP route weighs the stable and the
canary predictor Services, with `mirror` + `mirrorPercentage` to the canary while shadowing.

Hosts are the predictor Services' short names, which Istio resolves in the VirtualService's own
namespace (the Rollout's, where the InferenceServices live).

An experiment puts an HTTP route `fmops-experiment` first: a `regex` header match (RE2, matched whole)
on x-fmops-bucket to the canary alone; Istio takes the first route that matches, e.g. for buckets 0..2:

    http:
    - name: fmops-experiment
      match: [{headers: {x-fmops-bucket: {regex: "^(0|1|2)$"}}}]
      route: [{destination: {host: reco-r2-predictor, port: {number: 80}}}]
    - name: fmops
      route: [{destination: {host: reco-r1-predictor, ...}, weight: 100}, {destination: {host: reco-r2-predictor, ...}, weight: 0}]
"""

from __future__ import annotations

from typing import ClassVar

from fmop.api.rollout import IstioRouting, TrafficRouting
from fmop.rollout import naming
from fmop.rollout.providers.base import (
    UNKNOWN,
    Obj,
    ObjectRef,
    RolloutRef,
    TrafficProvider,
    Unknown,
    backend,
    check,
    dig,
    weighted,
    with_buckets,
)
from fmop.rollout.types import ObservedTraffic, SetTraffic

API_VERSION = "networking.istio.io/v1"
ROUTE_NAME = "fmops"  # the name of the weighted HTTP route the operator writes
EXPERIMENT_ROUTE_NAME = "fmops-experiment"  # the one before it during an experiment


def _settings(routing: TrafficRouting) -> IstioRouting:
    if routing.istio is None:
        raise ValueError("spec.trafficRouting.istio (hosts) is required when provider is istio")
    return routing.istio


def _destination(host: str) -> Obj:
    return {"host": host, "port": {"number": naming.PREDICTOR_PORT}}


class Istio(TrafficProvider):
    name: ClassVar[str] = "istio"
    install_hint: ClassVar[str] = "install Istio's CRDs (networking.istio.io, from istio.io/api or the Istio base chart)"
    name_field: ClassVar[str] = "spec.trafficRouting.istio.virtualServiceName"

    def objects(self, rollout: RolloutRef, routing: TrafficRouting) -> list[ObjectRef]:
        name = naming.traffic_object_name(rollout.name, _settings(routing).virtualServiceName)
        return [ObjectRef(API_VERSION, "VirtualService", "virtualservices", name, rollout)]

    def render(self, rollout: RolloutRef, routing: TrafficRouting, t: SetTraffic) -> list[Obj]:
        settings = _settings(routing)
        stable_weight, canary_weight = check(t)
        route: list[Obj] = [{"destination": _destination(backend(rollout, t.stable_revision)), "weight": stable_weight}]
        http: Obj = {"name": ROUTE_NAME, "route": route}
        if t.canary_revision is not None:
            canary = backend(rollout, t.canary_revision)
            route.append({"destination": _destination(canary), "weight": canary_weight})
            if t.mirror_percent:
                http["mirror"] = _destination(canary)
                http["mirrorPercentage"] = {"value": float(t.mirror_percent)}
        routes = [http]
        if t.buckets is not None and t.canary_revision is not None:
            routes.insert(0, {"name": EXPERIMENT_ROUTE_NAME,
                              "match": [{"headers": {naming.BUCKET_HEADER: {"regex": naming.bucket_regex(*t.buckets)}}}],
                              "route": [{"destination": _destination(backend(rollout, t.canary_revision))}]})
        spec: Obj = {"hosts": list(settings.hosts), "http": routes}
        if settings.gateways:
            spec["gateways"] = list(settings.gateways)
        (ref,) = self.objects(rollout, routing)
        return [{"apiVersion": API_VERSION, "kind": "VirtualService", "metadata": rollout.metadata(ref.name), "spec": spec}]

    def observe(self, found: list[Obj | None]) -> ObservedTraffic | Unknown:
        http = dig(found[0] if found else None, "spec", "http")
        if not isinstance(http, list) or len(http) not in (1, 2):
            return UNKNOWN
        main = _weighted_route(http[-1])
        if len(http) == 1:
            return main
        first = http[0]
        match = dig(first, "match")
        headers = dig(match, 0, "headers")
        route = dig(first, "route")
        if (not isinstance(match, list) or len(match) != 1 or not isinstance(match[0], dict) or set(match[0]) != {"headers"}
                or not isinstance(headers, dict) or list(headers) != [naming.BUCKET_HEADER]
                or not isinstance(headers[naming.BUCKET_HEADER], dict) or set(headers[naming.BUCKET_HEADER]) != {"regex"}
                or dig(first, "mirror") is not None or not isinstance(route, list) or len(route) != 1
                or dig(route[0], "weight") not in (None, 100)):
            return UNKNOWN  # not the route render writes: another match or header, a prefix, a mirror, a split
        return with_buckets(main, dig(route[0], "destination", "host"), dig(headers, naming.BUCKET_HEADER, "regex"))


def _weighted_route(http: object) -> ObservedTraffic | Unknown:
    """The HTTP route that weighs stable and canary (and mirrors to the canary): it must match everything."""
    if not isinstance(http, dict) or dig(http, "match"):
        return UNKNOWN
    route = dig(http, "route")
    if not isinstance(route, list):
        return UNKNOWN
    mirror = None
    if dig(http, "mirror") is not None:
        percent = dig(http, "mirrorPercentage", "value")
        mirror = (dig(http, "mirror", "host"), 100 if percent is None else percent)  # Istio: no percentage mirrors all
    # a lone destination without weight gets all traffic
    weights = [(dig(r, "destination", "host"), dig(r, "weight") if dig(r, "weight") is not None else (100 if len(route) == 1 else None)) for r in route]
    return weighted(weights, mirror)
