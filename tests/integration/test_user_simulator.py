"""The user simulator (fmdev.local.users) against the real Triton server with an exported model: held-out
users get real lists, their outcomes are what they really did next, and the served model counts exactly the
outcomes the simulator reported. No Kubernetes node: the simulator talks to the server directly, as it does to
the gateway."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fmdev.local.users import Simulator, User, held_out_users
from fmrec.data.movielens import load_ml100k
from fmrec.serving.client import Event, RecommenderClient
from fmrec.serving.export import export_triton
from fmrec.serving.server import TritonServer
from tests.integration.rollout_support import train_tiny_fm

K = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("users")
    export_triton(train_tiny_fm(work / "fm"), work / "models", name="fmrec", k=K)
    with TritonServer(work / "models", work) as s:
        yield s


@pytest.fixture(scope="module")
def users() -> list[User]:
    return held_out_users(load_ml100k())[:200]


def _counter(server: TritonServer, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{([^}}]*)\}} ([0-9.e+]+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _top(server: TritonServer, user: User) -> list[str]:
    history = [Event(item, timestamp=t, action=a) for item, t, a in zip(user.items, user.timestamps, user.actions, strict=True)]
    return [i for i in RecommenderClient(server.http_url).recommend(history, k=K).items if i]


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_outcomes_are_what_each_user_did_next_and_the_server_counts_them(server: TritonServer, users: list[User], noise: float) -> None:
    before = {o: _counter(server, "fmrec_outcomes_total", outcome=o) for o in ("played", "ignored")}
    sim = Simulator(f"http://{server.http_url}", users, k=K, noise=noise, rate=200, duration=120, max_visits=60, seed=3)
    tallies = sim.run()
    assert sum(t.visits for t in tallies.values()) == 60 and sum(t.answered for t in tallies.values()) == 60
    assert not any(t.failures for t in tallies.values()), sim.describe()
    assert len(sim.recent) == 60
    by_key = {u.key: u for u in users}
    for key, bucket, outcome, position in sim.recent:
        user = by_key[key]
        assert bucket == user.bucket
        top = _top(server, user)  # the same list the simulator got: the served model is deterministic
        hit = user.next_item in top
        assert outcome == ("played" if hit != (noise == 1.0) else "ignored"), (key, user.next_item, top, outcome)
        assert position == (top.index(user.next_item) + 1 if outcome == "played" and hit else None)
    reported = {o: sum(t.outcomes[o] for t in tallies.values()) for o in ("played", "ignored")}
    assert {o: _counter(server, "fmrec_outcomes_total", outcome=o) - before[o] for o in reported} == reported


def test_a_skew_drops_the_visits_of_the_users_below_the_cut(server: TritonServer, users: list[User]) -> None:
    sim = Simulator(f"http://{server.http_url}", users, k=K, rate=200, duration=120, max_visits=40, seed=4, skew=1.0, skew_below=50)
    tallies = sim.run()
    assert tallies["candidate"].visits == 0 and tallies["stable"].visits == 40 and sim.dropped > 0
    assert all(bucket >= 50 for _, bucket, _, _ in sim.recent)


def test_an_unreachable_gateway_is_counted_not_raised(users: list[User], tmp_path: Path) -> None:
    sim = Simulator("http://127.0.0.1:9", users, rate=200, duration=30, max_visits=5, seed=0)
    tallies = sim.run()
    assert sum(t.visits for t in tallies.values()) == 5 and sum(t.answered for t in tallies.values()) == 0
    assert sum(sum(t.failures.values()) for t in tallies.values()) == 5
