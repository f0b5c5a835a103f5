"""The alert benchmark's pure parts: it reads the canary's weight off what the traefik provider
really writes, and summarises trials (the benchmark itself runs on the local node: make bench-alert)."""

from __future__ import annotations

import pytest

from fmop.api.rollout import TrafficRouting
from fmdev.bench.alert import _canary_weight, summary
from fmop.rollout import naming
from fmop.rollout.providers import PROVIDERS, RolloutRef
from fmop.rollout.types import SetTraffic

ROLLOUT = RolloutRef(name="recommender", namespace="bench-alert", uid="2f1c0a52-0000-4000-8000-000000000002")
ROUTING = TrafficRouting.model_validate({"provider": "traefik", "traefik": {"ingressRoute": {"entryPoints": ["web"], "match": "Host(`r`)"}}})


@pytest.mark.parametrize(("weight", "want"), [(50, 50), (0, 0), (100, 100)])
def test_canary_weight_is_read_from_the_split_the_traefik_provider_writes(weight: int, want: int) -> None:
    split, _main, _route = PROVIDERS["traefik"].render(ROLLOUT, ROUTING, SetTraffic(3, 4, weight, 0))
    assert split["metadata"]["name"] == "recommender-split"
    assert _canary_weight(split, naming.predictor_service("recommender", 4)) == want
    assert _canary_weight(split, naming.predictor_service("recommender", 5)) == 0, "another revision has no weight"


def test_rolled_back_split_gives_the_canary_nothing() -> None:
    split, _main, _route = PROVIDERS["traefik"].render(ROLLOUT, ROUTING, SetTraffic(3, None, 0, 0))
    assert _canary_weight(split, naming.predictor_service("recommender", 4)) == 0
    assert _canary_weight(split, naming.predictor_service("recommender", 3)) == 100


def test_summary_gives_median_and_slowest_of_each_measure() -> None:
    rows = [{"detect_s": d, "restored_s": r, "status_s": r + 0.1} for d, r in [(10.0, 1.0), (12.0, 3.0), (30.0, 2.0)]]
    lines = summary(rows).splitlines()
    assert lines[0].startswith("3 trials")
    assert lines[1].split()[-2:] == ["12.00", "30.00"]
    assert lines[2].split()[-2:] == ["2.00", "3.00"]
    assert lines[3].split()[-2:] == ["2.10", "3.10"]
