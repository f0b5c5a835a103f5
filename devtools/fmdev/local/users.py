"""A user simulator for the local node: held-out MovieLens 100K users ask the served recommender for a list
through the gateway, each with the sticky bucket header of an A/B experiment, and report what they would
have done with it, so an experiment step has real outcomes to judge without real users.

One visit:

1. a user is drawn (uniformly, with replacement, seeded) from the users of the leave-one-out split
   (fmrec.data.split) with at least `min_history` events before their held-out test event;
2. the user's history before that event (its newest `history` events, items, timestamps and ratings as
   a client sends them) goes to the recommend model, `POST /v2/models/<model>/infer` with the `Host` of
   the route and `x-fmops-bucket: bucket("ml100k-<user id>")` (fmrec.serving.client.bucket);
3. the outcome is what the user really did next: "played" (with the item's position) when the held-out
   item, which no served version trained on (every version trains on all events but the held-out ones),
   is in the returned top K, "ignored" otherwise; with probability `noise` the outcome is flipped (a user
   who plays something found elsewhere, or who skips the list after all);
4. the outcome goes to `<model>_outcome` through the same route, with the same header, so it reaches the
   revision that served the list.

Bounded: at most `rate` visits per second, `duration` seconds and `max_visits` visits, one thread, a 10 s
timeout per request. `skew` > 0 drops that share of the visits of users whose bucket is below
`skew_below` before they are sent (a broken client or route: the sample-ratio-mismatch scenario).

    python -m fmdev.local.users --url http://127.0.0.1:8000 --host reco.test --rate 20 --duration 120

prints a line of progress every 10 s and a summary per bucket range at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from fmrec.data.movielens import load_ml100k
from fmrec.data.schema import EventLog
from fmrec.data.split import leave_one_out
from fmrec.serving.client import BUCKET_HEADER, bucket
from fmrec.serving.protocol import outcome_model


@dataclass(frozen=True)
class User:
    """One replayable user: the key the bucket is computed from, the history a client sends, the held-out next item."""

    key: str
    items: tuple[str, ...]
    timestamps: tuple[int, ...]
    actions: tuple[str, ...]
    next_item: str

    @property
    def bucket(self) -> int:
        return bucket(self.key)


def held_out_users(log: EventLog, history: int = 50, min_history: int = 5) -> list[User]:
    """Every user with at least `min_history` events before the held-out test event, in user order."""
    split = leave_one_out(log)
    sl = split.log
    out = []
    for u in split.test_users:
        idx = split.history(int(u), "test")[-history:]
        if len(split.history(int(u), "test")) < min_history:
            continue
        target = split.target(int(u), "test")
        out.append(User(
            key=f"ml100k-{sl.user_ids[int(u) - 1]}",
            items=tuple(sl.item_ids[int(c) - 1] for c in sl.item[idx]),
            timestamps=tuple(int(t) for t in sl.timestamp[idx]),
            actions=tuple(sl.action_ids[int(c) - 1] if c else "" for c in sl.action[idx]),
            next_item=sl.item_ids[int(sl.item[target]) - 1],
        ))
    return out


def recommend_body(user: User, k: int) -> dict[str, Any]:
    """The KServe v2 JSON of one user's recommend request."""
    n = len(user.items)
    return {"inputs": [
        {"name": "ITEMS", "datatype": "BYTES", "shape": [1, n], "data": list(user.items)},
        {"name": "TIMESTAMPS", "datatype": "INT64", "shape": [1, n], "data": list(user.timestamps)},
        {"name": "ACTIONS", "datatype": "BYTES", "shape": [1, n], "data": list(user.actions)},
        {"name": "K", "datatype": "INT32", "shape": [1, 1], "data": [k]},
    ]}


def outcome_body(outcome: str, position: int | None) -> dict[str, Any]:
    """The KServe v2 JSON of one outcome report."""
    inputs: list[dict[str, Any]] = [{"name": "OUTCOME", "datatype": "BYTES", "shape": [1, 1], "data": [outcome]}]
    if position is not None:
        inputs.append({"name": "POSITION", "datatype": "INT32", "shape": [1, 1], "data": [position]})
    return {"inputs": inputs}


def top_items(answer: dict[str, Any]) -> list[str]:
    """TOPK_ITEMS of a recommend answer (one user), best first, without the "" padding."""
    out = next((o for o in answer.get("outputs", []) if o.get("name") == "TOPK_ITEMS"), None)
    if out is None:
        raise ValueError(f"the answer has no TOPK_ITEMS output: {json.dumps(answer)[:200]}")
    return [str(i) for i in out.get("data", []) if i]


@dataclass
class Tally:
    """What one bucket range saw: visits sent, lists answered, outcomes reported, failures (HTTP status or error)."""

    visits: int = 0
    answered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def play_rate(self) -> float:
        reported = sum(self.outcomes.values())
        return self.outcomes["played"] / reported if reported else 0.0


@dataclass
class Simulator:
    """Replays `users` against `url` (the gateway) as described in the module docstring."""

    url: str
    users: list[User]
    host: str = ""
    model: str = "fmrec"
    k: int = 10
    noise: float = 0.05
    rate: float = 20.0
    duration: float = 60.0
    max_visits: int = 100_000
    seed: int = 0
    skew: float = 0.0
    skew_below: int = 50
    split_at: int = 50  # buckets below it are tallied as "candidate", the others "stable" (the experiment's range)
    tallies: dict[str, Tally] = field(default_factory=lambda: {"candidate": Tally(), "stable": Tally()})
    dropped: int = 0
    # The newest visits that got a list: (user key, bucket, outcome reported, position or None), for checks and reports.
    recent: deque[tuple[str, int, str, int | None]] = field(default_factory=lambda: deque(maxlen=10_000))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("no users to replay")
        if not 0 <= self.noise <= 1 or not 0 <= self.skew <= 1:
            raise ValueError(f"noise ({self.noise}) and skew ({self.skew}) are shares between 0 and 1")
        if self.rate <= 0 or self.duration <= 0:
            raise ValueError(f"rate ({self.rate}/s) and duration ({self.duration} s) must be positive")
        # No proxy from the environment: the gateway is on the node's bridge, never behind a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self.run, name="users", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _post(self, model: str, body: dict[str, Any], user: User) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", BUCKET_HEADER: str(user.bucket)}
        if self.host:
            headers["Host"] = self.host
        req = urllib.request.Request(f"{self.url}/v2/models/{model}/infer", data=json.dumps(body).encode(), headers=headers)
        with self._opener.open(req, timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer

    def visit(self, user: User, rng: random.Random) -> None:
        """One visit of `user`: a list, then its outcome; failures are tallied, never raised."""
        tally = self.tallies["candidate" if user.bucket < self.split_at else "stable"]
        tally.visits += 1
        try:
            items = top_items(self._post(self.model, recommend_body(user, self.k), user))
            tally.answered += 1
            hit = user.next_item in items
            if rng.random() < self.noise:
                hit = not hit
            position = items.index(user.next_item) + 1 if hit and user.next_item in items else None
            outcome = "played" if hit else "ignored"
            self._post(outcome_model(self.model), outcome_body(outcome, position), user)
            tally.outcomes[outcome] += 1
            self.recent.append((user.key, user.bucket, outcome, position))
        except urllib.error.HTTPError as err:
            tally.failures[str(err.code)] += 1
        except Exception as err:  # no answer (refused, reset, timed out) or a malformed one: counted, and the visits go on
            tally.failures[type(err).__name__] += 1

    def run(self) -> dict[str, Tally]:
        rng = random.Random(self.seed)
        period = 1.0 / self.rate
        start = last_report = time.monotonic()
        sent = 0
        while not self._stop.is_set() and sent < self.max_visits and time.monotonic() - start < self.duration:
            began = time.monotonic()
            user = rng.choice(self.users)
            if self.skew and user.bucket < self.skew_below and rng.random() < self.skew:
                self.dropped += 1
                continue
            self.visit(user, rng)
            sent += 1
            if began - last_report >= 10:
                last_report = began
                print(f"users: {sent} visits in {began - start:.0f} s; {self.describe()}", flush=True)
            self._stop.wait(max(0.0, period - (time.monotonic() - began)))
        return self.tallies

    def describe(self) -> str:
        parts = []
        for name, t in self.tallies.items():
            failed = f", failed {dict(t.failures)}" if t.failures else ""
            parts.append(f"{name}: {t.visits} visits, {t.answered} lists, played {t.outcomes['played']} "
                         f"({t.play_rate:.3f}){failed}")
        return "; ".join(parts) + (f"; dropped {self.dropped}" if self.dropped else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmdev.local.users", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the gateway (or a predictor), e.g. http://127.0.0.1:8000")
    p.add_argument("--host", default="", help="Host header of the route, e.g. reco.test")
    p.add_argument("--model", default="fmrec")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.05, help="share of outcomes flipped (default 0.05)")
    p.add_argument("--rate", type=float, default=20.0, help="visits per second at most (default 20)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds at most (default 60)")
    p.add_argument("--max-visits", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skew", type=float, default=0.0, help="drop this share of the visits of users below --skew-below")
    p.add_argument("--skew-below", type=int, default=50)
    p.add_argument("--split-at", type=int, default=50, help="tally buckets below it as the candidate's (the experiment's range)")
    a = p.parse_args(argv)
    sim = Simulator(a.url, held_out_users(load_ml100k()), host=a.host, model=a.model, k=a.k, noise=a.noise, rate=a.rate,
                    duration=a.duration, max_visits=a.max_visits, seed=a.seed, skew=a.skew, skew_below=a.skew_below,
                    split_at=a.split_at)
    sim.run()
    print(f"users: done; {sim.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
