"""Gateway API: one HTTPRoute (gateway.networking.k8s.io/v1) with weighted backendRefs, plus a
RequestMirror filter to the canary while shadowing.

`requestMirror.percent` is in the standard channel since Gateway API v1.3 (the v1.4.0 standard CRD
installed here has it, with `fraction` as the alternative), so no experimental CRDs are needed.
Implementations differ in what they support: Traefik, for one, does not implement RequestMirror, so
shadowing through Gateway API needs an implementation that does (Envoy Gateway, Istio, ...).

An experiment puts a first rule before the weighted one: a `RegularExpression` header match on
x-fmops-bucket to the canary alone, e.g. for buckets 0..2:

    rules:
    - matches: [{headers: [{type: RegularExpression, name: x-fmops-bucket, value: "^(0|1|2)$"}]}]
      backendRefs: [{name: reco-r2-predictor, port: 80}]
    - backendRefs: [{name: reco-r1-predictor, port: 80, weight: 100}, {name: reco-r2-predictor, port: 80, weight: 0}]

Regular-expression header matches are "Implementation-specific" support in Gateway API (the
HTTPHeaderMatch type's documentation): the dialect is the implementation's. Traefik v3's Gateway
provider turns the match into its HeaderRegexp matcher (Go regexp, matched anywhere in the value,
hence the anchors); Istio's Gateway API translation into its StringMatch regex and Envoy Gateway's
into Envoy's safe_regex (both RE2, matched whole). The expression is an anchored alternation of
decimal numbers, which every one of these dialects reads alike. An implementation without it reports
that in the HTTPRoute's status, which `observe` does not read: it reads the rules as written. The rule
with a header match wins over the one without (Gateway API's precedence counts header matches; Traefik
adds 100 to a rule's priority per header match), whatever their order.
"""

from __future__ import annotations

from typing import ClassVar

from fmop.api.rollout import GatewayAPIRouting, TrafficRouting
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

API_VERSION = "gateway.networking.k8s.io/v1"
_ALL_PATHS = {"type": "PathPrefix", "value": "/"}  # what the server defaults a match's path to


def _settings(routing: TrafficRouting) -> GatewayAPIRouting:
    if routing.gatewayAPI is None:
        raise ValueError("spec.trafficRouting.gatewayAPI (parentRefs) is required when provider is gatewayAPI")
    return routing.gatewayAPI


class GatewayAPI(TrafficProvider):
    name: ClassVar[str] = "gatewayAPI"
    install_hint: ClassVar[str] = "install the Gateway API CRDs (standard channel, v1.3 or newer for RequestMirror percent)"
    name_field: ClassVar[str] = "spec.trafficRouting.gatewayAPI.httpRouteName"

    def objects(self, rollout: RolloutRef, routing: TrafficRouting) -> list[ObjectRef]:
        name = naming.traffic_object_name(rollout.name, _settings(routing).httpRouteName)
        return [ObjectRef(API_VERSION, "HTTPRoute", "httproutes", name, rollout)]

    def render(self, rollout: RolloutRef, routing: TrafficRouting, t: SetTraffic) -> list[Obj]:
        settings = _settings(routing)
        stable_weight, canary_weight = check(t)
        refs = [{"name": backend(rollout, t.stable_revision), "port": naming.PREDICTOR_PORT, "weight": stable_weight}]
        rule: Obj = {"backendRefs": refs}
        if t.canary_revision is not None:
            canary = backend(rollout, t.canary_revision)
            refs.append({"name": canary, "port": naming.PREDICTOR_PORT, "weight": canary_weight})
            if t.mirror_percent:
                rule["filters"] = [{"type": "RequestMirror",
                                    "requestMirror": {"backendRef": {"name": canary, "port": naming.PREDICTOR_PORT}, "percent": t.mirror_percent}}]
        rules = [rule]
        if t.buckets is not None and t.canary_revision is not None:
            match = {"headers": [{"type": "RegularExpression", "name": naming.BUCKET_HEADER, "value": naming.bucket_regex(*t.buckets)}]}
            rules.insert(0, {"matches": [match], "backendRefs": [{"name": backend(rollout, t.canary_revision), "port": naming.PREDICTOR_PORT}]})
        spec: Obj = {"parentRefs": [p.model_dump(exclude_none=True) for p in settings.parentRefs], "rules": rules}
        if settings.hostnames:
            spec["hostnames"] = list(settings.hostnames)
        (ref,) = self.objects(rollout, routing)
        return [{"apiVersion": API_VERSION, "kind": "HTTPRoute", "metadata": rollout.metadata(ref.name), "spec": spec}]

    def observe(self, found: list[Obj | None]) -> ObservedTraffic | Unknown:
        rules = dig(found[0] if found else None, "spec", "rules")
        if not isinstance(rules, list) or len(rules) not in (1, 2):
            return UNKNOWN
        main = _weighted_rule(rules[-1])
        if len(rules) == 1:
            return main
        bucket_rule = rules[0]
        matches = dig(bucket_rule, "matches")
        headers = dig(matches, 0, "headers")
        refs = dig(bucket_rule, "backendRefs")
        if (not isinstance(matches, list) or len(matches) != 1 or not isinstance(matches[0], dict)
                or not set(matches[0]) <= {"headers", "path"} or dig(matches[0], "path") not in (None, _ALL_PATHS)
                or not isinstance(headers, list) or len(headers) != 1 or dig(bucket_rule, "filters")
                or dig(headers[0], "type") != "RegularExpression" or str(dig(headers[0], "name")).lower() != naming.BUCKET_HEADER
                or not isinstance(refs, list) or len(refs) != 1 or dig(refs[0], "weight") == 0):
            return UNKNOWN  # not the rule render writes: a method, query or path match, a filter, another header, a backend at 0
        return with_buckets(main, dig(refs[0], "name"), dig(headers[0], "value"))


def _weighted_rule(rule: object) -> ObservedTraffic | Unknown:
    """The rule that weighs stable and canary (and mirrors to the canary): it must match everything."""
    if not isinstance(rule, dict):
        return UNKNOWN
    if any(m not in ({}, {"path": _ALL_PATHS}) for m in dig(rule, "matches") or []):
        return UNKNOWN  # the server defaults an absent match to path prefix /
    refs = dig(rule, "backendRefs")
    if not isinstance(refs, list):
        return UNKNOWN
    mirrors = [f for f in dig(rule, "filters") or [] if dig(f, "type") == "RequestMirror"]
    if len(mirrors) > 1 or (mirrors and dig(mirrors[0], "requestMirror", "fraction") is not None):
        return UNKNOWN
    mirror = None
    if mirrors:
        percent = dig(mirrors[0], "requestMirror", "percent")
        mirror = (dig(mirrors[0], "requestMirror", "backendRef", "name"), 100 if percent is None else percent)  # no percent: all
    # weight defaults to 1 on the server when left out
    return weighted([(dig(r, "name"), dig(r, "weight") if dig(r, "weight") is not None else 1) for r in refs], mirror)
