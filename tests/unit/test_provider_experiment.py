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

from fmop.api.rollout import TrafficRouting
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


@pytest.mark.parametrize(("t", "words"), [
    (SetTraffic(1, None, 0, 0, buckets=(0, 49)), "without a canary revision"),
    (SetTraffic(1, 2, 0, 10, buckets=(0, 49)), "cannot mirror"),
    (SetTraffic(1, 2, 0, 0, buckets=(50, 10)), "within 0..99"),
    (SetTraffic(1, 2, 0, 0, buckets=(0, 100)), "within 0..99"),
    (SetTraffic(1, 2, 0, 0, buckets=(-1, 3)), "within 0..99"),
])
@pytest.mark.parametrize("provider", HEADERS)
def test_an_impossible_experiment_is_refused_saying_why(provider: str, t: SetTraffic, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        PROVIDERS[provider].render(ROLLOUT, routing(provider), t)


def test_providers_that_cannot_match_headers_say_so_with_the_fix() -> None:
    assert [p for p in PROVIDERS if base.supports_buckets(routing(p)) is None] == list(HEADERS)
    kserve = base.supports_buckets(routing("kserve"))
    assert kserve is not None and "use gatewayAPI, istio or traefik" in kserve
    with pytest.raises(ValueError, match="cannot route by header"):
        PROVIDERS["kserve"].render(ROLLOUT, routing("kserve"), experiment())
    bare = TrafficRouting.model_validate({"provider": "traefik"})  # routes to the TraefikService are the user's
    assert "spec.trafficRouting.traefik.ingressRoute" in (base.supports_buckets(bare) or "")
    with pytest.raises(ValueError, match="spec.trafficRouting.traefik.ingressRoute"):
        PROVIDERS["traefik"].render(ROLLOUT, bare, experiment())


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
        ]
    if provider == "istio":
        return [
            ("another header", lambda o: o[0]["spec"]["http"][0]["match"][0].update(headers={"x-user": {"regex": "^(0)$"}})),
            ("a prefix match", lambda o: o[0]["spec"]["http"][0]["match"][0]["headers"]["x-fmops-bucket"].update(prefix="1")),
            ("the stable behind the header", lambda o: o[0]["spec"]["http"][0]["route"][0]["destination"].update(host="reco-r1-predictor")),
            ("a mirror on the bucket route", lambda o: o[0]["spec"]["http"][0].update(mirror={"host": "reco-r2-predictor"})),
            ("a match on the weighted route", lambda o: o[0]["spec"]["http"][1].update(match=[{"uri": {"prefix": "/v2"}}])),
        ]
    return [
        ("another header", lambda o: o[2]["spec"]["routes"][0].update(match=o[2]["spec"]["routes"][0]["match"].replace("x-fmops-bucket", "x-user"))),
        ("another host", lambda o: o[2]["spec"]["routes"][0].update(match=o[2]["spec"]["routes"][0]["match"].replace("PathPrefix(`/`)", "Host(`x`)"))),
        ("the stable behind the header", lambda o: o[2]["spec"]["routes"][0]["services"][0].update(name="reco-r1-predictor")),
        ("a TraefikService behind the header", lambda o: o[2]["spec"]["routes"][0]["services"][0].update(kind="TraefikService")),
        ("a third route", lambda o: o[2]["spec"]["routes"].append(copy.deepcopy(o[2]["spec"]["routes"][1]))),
    ]


@pytest.mark.parametrize(("provider", "what", "edit"), [pytest.param(p, w, e, id=f"{p}-{w}") for p in HEADERS for w, e in _edits(p)])
def test_a_changed_bucket_route_is_unknown(provider: str, what: str, edit: Any) -> None:
    objs = PROVIDERS[provider].render(ROLLOUT, routing(provider), experiment())
    assert PROVIDERS[provider].observe(copy.deepcopy(objs)) == ObservedTraffic(0, 0, 2, buckets=(0, 49))
    edit(objs)
    assert PROVIDERS[provider].observe(objs) == "unknown", what


def test_the_routings_of_the_table_are_the_ones_of_the_provider_tests() -> None:
    assert set(HEADERS) | {"kserve"} == set(ROUTINGS)
