"""Traefik: two TraefikServices (traefik.io/v1alpha1) and, optionally, an IngressRoute to them.

- `<name>-split`: weighted round robin over the stable and canary predictor Services;
- `<name>`: a mirroring TraefikService whose main service is `<name>-split`, mirroring `percent` of
  requests to the canary predictor Service while shadowing (no mirrors otherwise).

Routes point at `<name>` (the spec's traefikServiceName, default the Rollout's name), which never
changes kind, so shadowing and canary steps only ever patch the two TraefikServices. With
spec.trafficRouting.traefik.ingressRoute the operator also writes an IngressRoute `<name>` to it.

A TraefikService cannot match headers, so an experiment needs that IngressRoute: a first route to
the canary's predictor Service alone, whose rule is the main one and Traefik v3's HeaderRegexp (Go
regexp, matched anywhere in any of the header's values, hence the anchors), e.g. for buckets 0..2:

    routes:
    - match: (Host(`reco.example.com`)) && HeaderRegexp(`x-fmops-bucket`, `^(0|1|2)$`)
      kind: Rule
      services: [{name: reco-r2-predictor, port: 80}]
    - match: Host(`reco.example.com`)
      kind: Rule
      services: [{name: reco, kind: TraefikService}]

Neither route sets `priority`: Traefik's default priority is the rule's length, and the bucket rule is
the main one plus more, so it is always the higher of the two (and stays so whatever the user's match).
`observe` reads the range back only while that holds (a priority a person set that puts the main route
first reads as unknown).
"""

from __future__ import annotations

import re
from typing import ClassVar

from fmop.api.rollout import TraefikRouting, TrafficRouting
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
    supports_buckets,
    weighted,
    with_buckets,
)
from fmop.rollout.types import ObservedTraffic, SetTraffic

API_VERSION = "traefik.io/v1alpha1"
SPLIT_SUFFIX = "-split"
_BUCKET_RULE = re.compile(r"^\((?P<match>.*)\) && HeaderRegexp\(`(?P<header>[^`]*)`, `(?P<regex>[^`]*)`\)$", re.DOTALL)


def bucket_rule(match: str, first: int, last: int) -> str:
    """The IngressRoute rule of an experiment's candidate buckets: the route's own match and the header's."""
    return f"({match}) && HeaderRegexp(`{naming.BUCKET_HEADER}`, `{naming.bucket_regex(first, last)}`)"


def _settings(routing: TrafficRouting) -> TraefikRouting:
    return routing.traefik or TraefikRouting()


class Traefik(TrafficProvider):
    name: ClassVar[str] = "traefik"
    install_hint: ClassVar[str] = "install Traefik's CRDs (traefik.io, from the Traefik Helm chart or its kubernetes-crd-definition-v1.yml)"
    name_field: ClassVar[str] = "spec.trafficRouting.traefik.traefikServiceName"

    def objects(self, rollout: RolloutRef, routing: TrafficRouting) -> list[ObjectRef]:
        settings = _settings(routing)
        name = naming.traffic_object_name(rollout.name, settings.traefikServiceName)
        refs = [ObjectRef(API_VERSION, "TraefikService", "traefikservices", name + SPLIT_SUFFIX, rollout),
                ObjectRef(API_VERSION, "TraefikService", "traefikservices", name, rollout)]
        if settings.ingressRoute is not None:
            refs.append(ObjectRef(API_VERSION, "IngressRoute", "ingressroutes", name, rollout))
        return refs

    def render(self, rollout: RolloutRef, routing: TrafficRouting, t: SetTraffic) -> list[Obj]:
        settings = _settings(routing)
        stable_weight, canary_weight = check(t)
        split, main, *route = self.objects(rollout, routing)
        services: list[Obj] = [{"name": backend(rollout, t.stable_revision), "port": naming.PREDICTOR_PORT, "weight": stable_weight}]
        mirroring: Obj = {"name": split.name, "kind": "TraefikService"}
        if t.canary_revision is not None:
            canary = backend(rollout, t.canary_revision)
            services.append({"name": canary, "port": naming.PREDICTOR_PORT, "weight": canary_weight})
            if t.mirror_percent:
                mirroring["mirrors"] = [{"name": canary, "port": naming.PREDICTOR_PORT, "percent": t.mirror_percent}]
        objs: list[Obj] = [
            {"apiVersion": API_VERSION, "kind": "TraefikService", "metadata": rollout.metadata(split.name), "spec": {"weighted": {"services": services}}},
            {"apiVersion": API_VERSION, "kind": "TraefikService", "metadata": rollout.metadata(main.name), "spec": {"mirroring": mirroring}},
        ]
        if t.buckets is not None and not route:
            raise ValueError(supports_buckets(routing) or "an experiment needs the IngressRoute")
        if route and settings.ingressRoute is not None:
            ingress = settings.ingressRoute
            routes: list[Obj] = [{"match": ingress.match, "kind": "Rule", "services": [{"name": main.name, "kind": "TraefikService"}]}]
            if t.buckets is not None and t.canary_revision is not None:
                routes.insert(0, {"match": bucket_rule(ingress.match, *t.buckets), "kind": "Rule",
                                  "services": [{"name": backend(rollout, t.canary_revision), "port": naming.PREDICTOR_PORT}]})
            spec: Obj = {"routes": routes}
            if ingress.entryPoints:
                spec["entryPoints"] = list(ingress.entryPoints)
            objs.append({"apiVersion": API_VERSION, "kind": "IngressRoute", "metadata": rollout.metadata(route[0].name), "spec": spec})
        return objs

    def observe(self, found: list[Obj | None]) -> ObservedTraffic | Unknown:
        if len(found) < 2:
            return UNKNOWN
        split, main = found[0], found[1]
        services = dig(split, "spec", "weighted", "services")
        mirroring = dig(main, "spec", "mirroring")
        if not isinstance(services, list) or not isinstance(mirroring, dict) or dig(mirroring, "name") != dig(split, "metadata", "name"):
            return UNKNOWN  # the mirroring service must wrap the weighted one, or the weights are not what is served
        mirrors = dig(mirroring, "mirrors") or []
        if not isinstance(mirrors, list) or len(mirrors) > 1:
            return UNKNOWN
        mirror = (dig(mirrors[0], "name"), dig(mirrors[0], "percent") or 0) if mirrors else None
        # Traefik's weight defaults to 1 when left out
        observed = weighted([(dig(s, "name"), dig(s, "weight") if dig(s, "weight") is not None else 1) for s in services], mirror)
        routes = dig(found[2], "spec", "routes") if len(found) > 2 else None
        if not isinstance(routes, list) or len(routes) < 2:
            return observed  # no IngressRoute written (routed by the user), or its one route to the TraefikService
        if len(routes) != 2:
            return UNKNOWN
        rule = _BUCKET_RULE.match(str(dig(routes[0], "match")))
        targets = dig(routes[0], "services")
        if (rule is None or rule.group("header").lower() != naming.BUCKET_HEADER or rule.group("match") != dig(routes[1], "match")
                or _priority(routes[0]) <= _priority(routes[1])
                or not isinstance(targets, list) or len(targets) != 1 or dig(targets[0], "kind") not in (None, "Service")
                or dig(targets[0], "weight") == 0
                or dig(routes[1], "services") != [{"name": dig(main, "metadata", "name"), "kind": "TraefikService"}]):
            return UNKNOWN  # not the route render writes, or one that Traefik no longer tries first
        return with_buckets(observed, dig(targets[0], "name"), rule.group("regex"))


def _priority(route: Obj) -> int:
    """The priority Traefik gives an IngressRoute route: its own, or (0 or none) the length of its rule."""
    priority = dig(route, "priority")
    if isinstance(priority, int) and not isinstance(priority, bool) and priority:
        return priority
    return len(str(dig(route, "match")))
