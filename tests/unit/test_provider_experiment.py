"""Traffic providers during an A/B experiment, pure: a range of user buckets goes to the canary by a header
match (x-fmops-bucket), everything else by the weights; observe() reads the range back, and anything a
person or another controller changed in it reads as "unknown". The same objects go to the real CRDs (and,
for Traefik, through a real Traefik) in tests/integration/test_provider_experiment.py."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from fmop.api.rollout import TrafficRouting, experiment_refusal
from fmop.rollout import naming
from fmop.rollout.providers import PROVIDERS, base
from fmop.rollout.types import ObservedTraffic, SetTraffic
from tests.unit.test_providers import ROLLOUT, ROUTINGS, routing

HEADERS = ("gatewayAPI", "istio", "traefik")


def experiment(first: int = 0, last: int = 49, stable: int = 1, canary: int = 2) -> SetTraffic:
    return SetTraffic(stable, canary, 0, 0, buckets=(first, last))


@pytest.mark.parametrize("provider", HEADERS)
@settings(max_examples=60, deadline=None)
@given(bounds=st.tuples(st.integers(0, 99), st.integers(0, 99)).map(sorted), stable=st.integers(1, 500), gap=st.integers(1, 500))
def test_the_bucket_range_survives_a_round_trip(provider: str, bounds: list[int], stable: int, gap: int) -> None:
    t = experiment(bounds[0], bounds[1], stable, stable + gap)
    p = PROVIDERS[provider]
    objs = p.render(ROLLOUT, routing(provider), t)
    assert p.observe(copy.deepcopy(objs)) == ObservedTraffic(0, 0, stable + gap, buckets=(bounds[0], bounds[1]))


@pytest.mark.parametrize("provider", HEADERS)
def test_without_an_experiment_there_is_no_header_route(provider: str) -> None:
    objs = PROVIDERS[provider].render(ROLLOUT, routing(provider), SetTraffic(1, 2, 25, 0))
    assert naming.BUCKET_HEADER not in repr(objs)
    assert PROVIDERS[provider].observe(objs) == ObservedTraffic(25, 0, 2)


def test_the_rendered_header_routes() -> None:
    gw = PROVIDERS["gatewayAPI"].render(ROLLOUT, routing("gatewayAPI"), experiment(0, 9))[0]["spec"]["rules"]
    assert gw[0] == {"matches": [{"headers": [{"type": "RegularExpression", "name": "x-fmops-bucket", "value": "^(0|1|2|3|4|5|6|7|8|9)$"}]}],
                     "backendRefs": [{"name": "reco-r2-predictor", "port": 80}]}
    assert [r["weight"] for r in gw[1]["backendRefs"]] == [100, 0] and "matches" not in gw[1]
    istio = PROVIDERS["istio"].render(ROLLOUT, routing("istio"), experiment(10, 12))[0]["spec"]["http"]
    assert istio[0] == {"name": "fmops-experiment", "match": [{"headers": {"x-fmops-bucket": {"regex": "^(10|11|12)$"}}}],
                        "route": [{"destination": {"host": "reco-r2-predictor", "port": {"number": 80}}}]}
    assert istio[1]["name"] == "fmops" and "match" not in istio[1]
    route = PROVIDERS["traefik"].render(ROLLOUT, routing("traefik"), experiment(98, 99))[2]["spec"]["routes"]
    assert route[0] == {"match": "(PathPrefix(`/`)) && HeaderRegexp(`x-fmops-bucket`, `^(98|99)$`)", "kind": "Rule",
                        "services": [{"name": "reco-r2-predictor", "port": 80}]}
    assert route[1]["services"] == [{"name": "reco", "kind": "TraefikService"}]
    assert len(route[0]["match"]) > len(route[1]["match"]), "Traefik's default priority is the rule's length: the bucket route first"


@pytest.mark.parametrize(("first", "last"), [(0, 0), (0, 49), (50, 99), (0, 99), (7, 31)])
def test_the_regex_matches_exactly_the_buckets_of_the_range(first: int, last: int) -> None:
    """As RE2 (Istio, Envoy, Alertmanager's engine) and Python's re (Go's regexp agrees on this alternation) read it."""
    regex = naming.bucket_regex(first, last)
    for compiled in (re2.compile(regex), re.compile(regex)):
        matched = {v for v in [*map(str, range(-5, 130)), "007", "7 ", " 7", "", "1e1", "+7", "٣"] if compiled.search(v)}
        assert matched == {str(b) for b in range(first, last + 1)}
    assert naming.buckets_of(regex) == (first, last)


RANGE = "SetTraffic.buckets must be a range first..last with 0 <= first <= last <= 99, got "


@pytest.mark.parametrize(("t", "message"), [
    (SetTraffic(1, None, 0, 0, buckets=(0, 49)), "SetTraffic without a canary revision cannot send user buckets 0..49 to a canary"),
    (SetTraffic(1, 2, 0, 10, buckets=(0, 49)), "SetTraffic cannot mirror 10% during an experiment: the candidate's users are its own "
                                               "(mirroring would make the stable's users its requests too)"),
    (SetTraffic(1, 2, 0, 0, buckets=(50, 10)), RANGE + "50..10"),
    (SetTraffic(1, 2, 0, 0, buckets=(0, 100)), RANGE + "0..100"),
    (SetTraffic(1, 2, 0, 0, buckets=(-1, 3)), RANGE + "-1..3"),
], ids=["no-canary", "mirror", "reversed", "past-99", "negative"])
@pytest.mark.parametrize("provider", [*HEADERS, "kserve"])
def test_an_impossible_experiment_is_refused_saying_why(provider: str, t: SetTraffic, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        PROVIDERS[provider].render(ROLLOUT, routing(provider), t)
    assert str(refused.value) == message


KSERVE = ("strategy.steps[].experiment needs routing by header, which trafficRouting.provider kserve cannot do (it splits by "
          "percentage only): use provider gatewayAPI, istio, or traefik with traefik.ingressRoute")
TRAEFIK_BARE = ("strategy.steps[].experiment with trafficRouting.provider traefik needs trafficRouting.traefik.ingressRoute: a "
                "TraefikService cannot match headers, the IngressRoute the operator writes can")


def test_providers_that_cannot_match_headers_say_so_with_the_fix() -> None:
    assert [p for p in PROVIDERS if base.supports_buckets(routing(p)) is None] == list(HEADERS)
    assert base.supports_buckets(routing("kserve")) == KSERVE
    with pytest.raises(ValueError) as refused:
        PROVIDERS["kserve"].render(ROLLOUT, routing("kserve"), experiment())
    assert str(refused.value) == KSERVE
    for bare in ({"provider": "traefik"}, {"provider": "traefik", "traefik": {"traefikServiceName": "x"}}):  # routes are the user's
        assert base.supports_buckets(TrafficRouting.model_validate(bare)) == TRAEFIK_BARE
        with pytest.raises(ValueError) as refused:
            PROVIDERS["traefik"].render(ROLLOUT, TrafficRouting.model_validate(bare), experiment())
        assert str(refused.value) == TRAEFIK_BARE
        assert PROVIDERS["traefik"].render(ROLLOUT, TrafficRouting.model_validate(bare), SetTraffic(1, 2, 10, 0))  # no experiment: fine


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_providers_refuse_in_the_words_of_admission_and_the_engine(provider: str) -> None:
    """One message wherever an experiment on a provider that cannot hold one is refused (CRD rule, engine, provider)."""
    assert base.supports_buckets(routing(provider)) == experiment_refusal(routing(provider))


def _edits(provider: str) -> list[tuple[str, Any]]:
    """(what a person changed, the change) in the rendered objects of an experiment on buckets 0..49."""
    if provider == "gatewayAPI":
        return [
            ("another header", lambda o: o[0]["spec"]["rules"][0]["matches"][0]["headers"][0].update(name="x-user")),
            ("a hand-written regex", lambda o: o[0]["spec"]["rules"][0]["matches"][0]["headers"][0].update(value="^[0-4]?[0-9]$")),
            ("an exact match", lambda o: o[0]["spec"]["rules"][0]["matches"][0]["headers"][0].update(type="Exact")),
            ("the stable behind the header", lambda o: o[0]["spec"]["rules"][0]["backendRefs"][0].update(name="reco-r1-predictor")),
            ("a third rule", lambda o: o[0]["spec"]["rules"].append(copy.deepcopy(o[0]["spec"]["rules"][1]))),
            ("a path on the weighted rule", lambda o: o[0]["spec"]["rules"][1].update(matches=[{"path": {"type": "PathPrefix", "value": "/v2"}}])),
            ("a path on the bucket rule", lambda o: o[0]["spec"]["rules"][0]["matches"][0].update(path={"type": "PathPrefix", "value": "/v2"})),
            ("a method on the bucket rule", lambda o: o[0]["spec"]["rules"][0]["matches"][0].update(method="POST")),
            ("a second match on the bucket rule", lambda o: o[0]["spec"]["rules"][0]["matches"].append({})),
            ("a second header on the bucket rule", lambda o: o[0]["spec"]["rules"][0]["matches"][0]["headers"].append(
                {"type": "Exact", "name": "x-user", "value": "a"})),
            ("the canary at weight 0 behind the header", lambda o: o[0]["spec"]["rules"][0]["backendRefs"][0].update(weight=0)),
            ("a second backend behind the header", lambda o: o[0]["spec"]["rules"][0]["backendRefs"].append(
                {"name": "reco-r1-predictor", "port": 80})),
            ("a filter on the bucket rule", lambda o: o[0]["spec"]["rules"][0].update(
                filters=[{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}])),
            ("a mirror on the weighted rule", lambda o: o[0]["spec"]["rules"][1].update(filters=[
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "reco-r2-predictor", "port": 80}, "percent": 10}}])),
            ("the rules swapped", lambda o: o[0]["spec"]["rules"].reverse()),
            ("no canary behind the weights", lambda o: o[0]["spec"]["rules"][1]["backendRefs"].pop()),
            ("a range that is not one", lambda o: o[0]["spec"]["rules"][0]["matches"][0]["headers"][0].update(value="^(3|1|2)$")),
        ]
    if provider == "istio":
        return [
            ("another header", lambda o: o[0]["spec"]["http"][0]["match"][0].update(headers={"x-user": {"regex": "^(0)$"}})),
            ("a prefix match", lambda o: o[0]["spec"]["http"][0]["match"][0]["headers"]["x-fmops-bucket"].update(prefix="1")),
            ("the stable behind the header", lambda o: o[0]["spec"]["http"][0]["route"][0]["destination"].update(host="reco-r1-predictor")),
            ("a mirror on the bucket route", lambda o: o[0]["spec"]["http"][0].update(mirror={"host": "reco-r2-predictor"})),
            ("a match on the weighted route", lambda o: o[0]["spec"]["http"][1].update(match=[{"uri": {"prefix": "/v2"}}])),
            ("a uri on the bucket route", lambda o: o[0]["spec"]["http"][0]["match"][0].update(uri={"prefix": "/v2"})),
            ("a second match on the bucket route", lambda o: o[0]["spec"]["http"][0]["match"].append({"headers": {"x-user": {"exact": "a"}}})),
            ("a second header on the bucket route", lambda o: o[0]["spec"]["http"][0]["match"][0]["headers"].update(x_user={"exact": "a"})),
            ("a split behind the header", lambda o: o[0]["spec"]["http"][0]["route"].append(
                {"destination": {"host": "reco-r1-predictor", "port": {"number": 80}}, "weight": 50})),
            ("a weight below 100 behind the header", lambda o: o[0]["spec"]["http"][0]["route"][0].update(weight=0)),
            ("a header match that is not an object", lambda o: o[0]["spec"]["http"][0]["match"][0]["headers"].update({"x-fmops-bucket": 5})),
            ("the routes swapped", lambda o: o[0]["spec"]["http"].reverse()),
            ("a mirror on the weighted route", lambda o: o[0]["spec"]["http"][1].update(
                mirror={"host": "reco-r2-predictor"}, mirrorPercentage={"value": 5.0})),
        ]
    return [
        ("another header", lambda o: o[2]["spec"]["routes"][0].update(match=o[2]["spec"]["routes"][0]["match"].replace("x-fmops-bucket", "x-user"))),
        ("another host", lambda o: o[2]["spec"]["routes"][0].update(match=o[2]["spec"]["routes"][0]["match"].replace("PathPrefix(`/`)", "Host(`x`)"))),
        ("the stable behind the header", lambda o: o[2]["spec"]["routes"][0]["services"][0].update(name="reco-r1-predictor")),
        ("a TraefikService behind the header", lambda o: o[2]["spec"]["routes"][0]["services"][0].update(kind="TraefikService")),
        ("a third route", lambda o: o[2]["spec"]["routes"].append(copy.deepcopy(o[2]["spec"]["routes"][1]))),
        ("a priority that puts the main route first", lambda o: o[2]["spec"]["routes"][1].update(priority=10_000)),
        ("a priority that drops the bucket route below", lambda o: o[2]["spec"]["routes"][0].update(priority=1)),
        ("the main route to another service", lambda o: o[2]["spec"]["routes"][1].update(services=[{"name": "reco-r1-predictor", "port": 80}])),
        ("the canary at weight 0 behind the header", lambda o: o[2]["spec"]["routes"][0]["services"][0].update(weight=0)),
        ("a double-quoted matcher", lambda o: o[2]["spec"]["routes"][0].update(
            match=o[2]["spec"]["routes"][0]["match"].replace("HeaderRegexp(`x-fmops-bucket`, `^(0", 'HeaderRegexp("x-fmops-bucket", `^(0'))),
        ("the header's own match alone", lambda o: o[2]["spec"]["routes"][0].update(match="HeaderRegexp(`x-fmops-bucket`, `^(1)$`)")),
        ("a range that is not one", lambda o: o[2]["spec"]["routes"][0].update(
            match=o[2]["spec"]["routes"][0]["match"].replace("`^(0|1|", "`^(1|0|"))),
    ]


@pytest.mark.parametrize(("provider", "what", "edit"), [pytest.param(p, w, e, id=f"{p}-{w}") for p in HEADERS for w, e in _edits(p)])
def test_a_changed_bucket_route_is_unknown(provider: str, what: str, edit: Any) -> None:
    objs = PROVIDERS[provider].render(ROLLOUT, routing(provider), experiment())
    assert PROVIDERS[provider].observe(copy.deepcopy(objs)) == ObservedTraffic(0, 0, 2, buckets=(0, 49))
    edit(objs)
    assert PROVIDERS[provider].observe(objs) == "unknown", what


def test_the_routings_of_the_table_are_the_ones_of_the_provider_tests() -> None:
    assert set(HEADERS) | {"kserve"} == set(ROUTINGS)


def test_priorities_that_keep_the_bucket_route_first_still_read_back() -> None:
    """Traefik tries the higher priority first; 0 (or none) is the rule's length."""
    p = PROVIDERS["traefik"]
    for bucket, main in ((500, 400), (0, 5), (None, len("PathPrefix(`/`)")), (2, 1)):
        objs = p.render(ROLLOUT, routing("traefik"), experiment())
        for route, priority in zip(objs[2]["spec"]["routes"], (bucket, main), strict=True):
            if priority is not None:
                route["priority"] = priority
        assert p.observe(objs) == ObservedTraffic(0, 0, 2, buckets=(0, 49)), (bucket, main)


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio"])
def test_what_the_api_server_fills_in_still_reads_back(provider: str) -> None:
    """Defaults the CRDs add (Gateway API: a match's path, a backendRef's group, kind and weight) change nothing."""
    objs = PROVIDERS[provider].render(ROLLOUT, routing(provider), experiment(3, 7))
    if provider == "gatewayAPI":
        for rule in objs[0]["spec"]["rules"]:
            for m in rule.get("matches", []):
                m["path"] = {"type": "PathPrefix", "value": "/"}
            for ref in rule["backendRefs"]:
                ref |= {"group": "", "kind": "Service"} | ({} if "weight" in ref else {"weight": 1})
    assert PROVIDERS[provider].observe(objs) == ObservedTraffic(0, 0, 2, buckets=(3, 7))


def test_the_operator_and_the_served_model_agree_on_the_header_and_the_buckets() -> None:
    """Two copies (the operator may not import the model): the routes match what clients send and the model counts."""
    from fmrec.serving import protocol
    from fmrec.serving.client import bucket

    assert (naming.BUCKET_HEADER, naming.BUCKETS) == (protocol.BUCKET_HEADER, protocol.BUCKETS)
    assert protocol.FORWARD_PATTERN == f"^{naming.BUCKET_HEADER}$"
    assert all(naming.buckets_of(naming.bucket_regex(b, b)) == (b, b) for b in {bucket(f"user-{i}") for i in range(500)})
