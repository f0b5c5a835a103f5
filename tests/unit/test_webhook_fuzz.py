"""Fuzzing the Alertmanager webhook receiver: hypothesis throws random and boundary requests at the real aiohttp
server (webhook.start on a free local port, in a loop on a thread, as in kopf's loop) and every answer must be
200, 400, 401 or 413 with a reason: never a 500, never a request left unanswered, and the server still answers after.

What is thrown: random JSON of every type; Alertmanager payloads with a wrong type, a missing field or a random
value at every level; deep nesting (200,000 brackets: a 500 before), numbers longer than Python reads, huge label
values and bodies over the limit, any Unicode including unpaired surrogate escapes, bytes that are not UTF-8, wrong
or missing tokens, and gzip/deflate Content-Encoding with good and bad streams. Alerts that are acted on must be
about the Rollout's own namespace (tenant isolation holds under fuzzing too).

Reproducible: the examples are derived from the test itself (hypothesis derandomize=True), no example database.
FMOP_FUZZ_EXAMPLES sets the count per property (default 500: the file takes about 40 s on two shared cores;
`make fuzz` runs 20,000, about 9 minutes: 3,000 took 77 s). Run with -s for the tally of answers.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fmop.rollout.types import Alert
from fmop.rollout.webhook import MAX_BODY_BYTES, NAMESPACE_LABEL, PATH, WebhookServer, start
from tests.unit.test_webhook import alert, payload, rollout

EXAMPLES = int(os.environ.get("FMOP_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
TOKEN = "fuzz-t0ken"
NAMESPACES = ("team-a", "team-b", "team-c")
ROLLOUTS = [
    rollout("team-a", "reco", {"name": "severity", "value": "critical"}),
    rollout("team-b", "search", {"name": "alertname", "op": "=~", "value": "(x+x+)+y|Fm.*"}, {"name": "severity", "op": "!~", "value": "info"}),
    rollout("team-c", "kids", {"name": "rollout", "op": "!=", "value": ""}),
]
FINAL = {200, 400, 401, 413}  # what a fuzzed request may get (503 and 500 are for a starting operator and a failed rollback)


class Server:
    """webhook.start on 127.0.0.1, in an asyncio loop on a thread; remembers what on_alerts was called with."""

    def __init__(self, token_file: Path) -> None:
        self.calls: list[tuple[str, str, tuple[Alert, ...]]] = []
        self.answers: Counter[int] = Counter()  # status: how many, printed at the end (pytest -s)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: WebhookServer = self._run(start(lambda: ROLLOUTS, self.on_alerts, token_file, host="127.0.0.1", port=0))
        self.conn: http.client.HTTPConnection | None = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def on_alerts(self, namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        self.calls.append((namespace, name, alerts))
        return "rolled back"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        """One request on a kept-alive connection (a new one if the server closed it): status, content type, body."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close_connection()
                return r.status, r.getheader("Content-Type", ""), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close_connection()  # a kept-alive connection the server had closed: once more on a new one
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.close_connection()
        self._run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    token_file = tmp_path_factory.mktemp("fuzz") / "token"
    token_file.write_text(TOKEN)
    s = Server(token_file)
    yield s
    assert s.request("GET", "/healthz")[0] == 200  # still serving after everything
    print(f"\nfuzzed webhook: {sum(s.answers.values())} requests answered {dict(sorted(s.answers.items()))}, "
          f"{len(s.calls)} rollback call(s), each in the alert's own namespace")
    s.close()


@dataclass(frozen=True)
class Post:
    body: bytes
    token: str | None = TOKEN
    encoding: str = ""  # Content-Encoding: "", gzip, deflate (the body is sent as given: encode it first)

    def __repr__(self) -> str:  # hypothesis prints the failing example; keep megabytes out of the report
        shown = self.body if len(self.body) <= 300 else self.body[:200] + f"... ({len(self.body)} bytes) ...".encode() + self.body[-50:]
        return f"Post(body={shown!r}, token={self.token!r}, encoding={self.encoding!r})"


def check(server: Server, post: Post) -> None:
    """The answer is final and says why; whatever was acted on is about the Rollout's own namespace."""
    headers = {"Content-Type": "application/json"}
    if post.token is not None:
        headers["Authorization"] = f"Bearer {post.token}"
    if post.encoding:
        headers["Content-Encoding"] = post.encoding
    before = len(server.calls)
    status, content_type, data = server.request("POST", PATH, post.body, headers)
    server.answers[status] += 1
    assert status in FINAL, (status, data[:500])
    assert content_type.startswith("application/json"), (status, content_type, data[:500])
    answer = json.loads(data)
    if status == 200:
        assert {"received", "firing", "matched", "unmatched", "duplicates", "invalidMatchers"} <= answer.keys(), answer
    else:
        assert isinstance(answer.get("error"), str) and answer["error"], answer
        assert len(answer["error"]) < 1000, answer["error"][:1000]  # a reason, not an echo of the body
    if post.token != TOKEN:
        assert status == 401
    for namespace, name, alerts in server.calls[before:]:
        for a in alerts:
            assert dict(a.labels).get(NAMESPACE_LABEL) == namespace, (namespace, name, a)


# ---------------------------------------------------------------- strategies
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # any code point, unpaired surrogates included
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON_VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ANY_TEXT, inner, max_size=5),
                           max_leaves=30)
LABEL_NAMES = st.sampled_from(["alertname", "severity", "rollout", NAMESPACE_LABEL, "revision", "job"]) | ANY_TEXT
_SOME_VALUES = st.sampled_from(["critical", "info", "FmRolloutErrorRate", "x" * 30, "x" * 30 + "y", "", *NAMESPACES, "team-z"])
LABEL_VALUES = st.one_of(_SOME_VALUES, _SOME_VALUES, ANY_TEXT, ANY_TEXT,
                         st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\U0001f600", "\ud800"]), st.integers(0, 600_000)))
GOOD_TIMES = st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat()) | st.sampled_from(["2026-01-01T00:07:30.123456789+02:00"])
TIMESTAMPS = st.one_of(GOOD_TIMES, GOOD_TIMES, GOOD_TIMES, ANY_TEXT,
                       st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2026-13-01T00:00:00Z",
                                        "2026-01-01T00:00:00", ""]))
HEX = st.text("0123456789abcdef", min_size=16, max_size=16)
FINGERPRINTS = st.one_of(HEX, st.sampled_from(["fp1", "fp2"]), ANY_TEXT)
# Labels that may match the Rollouts (a team's namespace or none, their matchers' labels), and random ones beside them.
LABELS = st.builds(lambda known, extra: {**extra, **known},
                   st.fixed_dictionaries({}, optional={
                       "alertname": st.sampled_from(["FmRolloutErrorRate", "x" * 30, "CanaryErrors"]) | LABEL_VALUES,
                       "severity": st.sampled_from(["critical", "info"]) | LABEL_VALUES,
                       NAMESPACE_LABEL: st.sampled_from([*NAMESPACES, "team-z", ""]) | LABEL_VALUES,
                       "rollout": st.sampled_from(["reco", "kids", ""]) | LABEL_VALUES}),
                   st.dictionaries(LABEL_NAMES, LABEL_VALUES, max_size=3))


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A payload as Alertmanager sends it, labels drawn from wide sets; times and fingerprints from wide sets too, or (half
    the payloads, so that many are judged and acted on) from well-formed ones."""
    well_formed = draw(st.booleans())
    times = GOOD_TIMES if well_formed else TIMESTAMPS
    fingerprints = HEX if well_formed else FINGERPRINTS
    alerts = [
        {"status": draw(st.sampled_from(["firing", "firing", "resolved"])),
         "labels": draw(LABELS),
         "annotations": draw(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=2)),
         "startsAt": draw(times), "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph",
         "fingerprint": draw(fingerprints)}
        for _ in range(draw(st.integers(0, 4)))
    ]
    return payload(*alerts)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document: object keys and list indexes."""
    found = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += _paths(v, (*prefix, i))
    return found


_NEST = "\x00nested here\x00"


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """A payload, encoded, with one place at any level given a value of another type, deleted, or nested deep."""
    doc = draw(payloads())
    path = draw(st.sampled_from(_paths(doc)))
    action = draw(st.sampled_from(["replace", "delete", "nest", "keep"]))
    if not path:
        return _encode(draw(JSON_VALUES) if action == "replace" else doc)
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    elif action == "replace":
        parent[path[-1]] = draw(JSON_VALUES)
    elif action == "nest":  # deeper than json.dumps can write: put a marker there, and the brackets around it after
        depth, value = draw(st.integers(1, 100_000)), parent[path[-1]]
        parent[path[-1]] = _NEST
        return _encode(doc).replace(_encode(_NEST), b"[" * depth + _encode(value) + b"]" * depth, 1)
    return _encode(doc)


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _nested(opening: bytes, closing: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(1, 300_000).map(lambda n: opening * n + b"1" + closing * n)


BODIES = st.one_of(
    JSON_VALUES.map(_encode),
    mutated_payloads(),
    st.binary(max_size=2000),
    _nested(b"[", b"]"),
    _nested(b'{"a":', b"}"),
    _nested(b'{"version": "4", "alerts": [{"labels": {"a": ', b"}}]}"),
    st.builds(lambda n: b'{"version": "4", "alerts": [], "x": ' + b"9" * n + b"}", st.integers(1, 100_000)),
    st.tuples(mutated_payloads(), st.integers(0, 10_000), st.binary(min_size=1, max_size=4)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]),  # bytes spliced into a payload: bad UTF-8, broken JSON
)


@st.composite
def posts(draw: st.DrawFn) -> Post:
    body = draw(BODIES)
    token = draw(st.sampled_from([TOKEN] * 8 + [None, "wrong", TOKEN + "x"]))
    encoding = draw(st.sampled_from([""] * 6 + ["gzip", "deflate", "gzip-garbage"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "gzip-garbage":
        encoding, body = "gzip", body[:100]
    return Post(body, token, encoding)


def _big_label(size: int) -> bytes:
    return json.dumps(payload(alert(fingerprint="big", severity="critical", namespace="team-a", padding="x" * size))).encode()


BOUNDARY = [
    Post(b"[" * 200_000 + b"]" * 200_000),  # the case: a 500 before
    Post(b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    Post(b'{"version": ' + b"9" * 5000 + b"}"),
    Post(b'{"version": "4", "alerts": [\xff\xfe]}'),
    Post(b""),
    Post(b"null"),
    Post(b"\xef\xbb\xbf{}"),
    Post(_big_label(MAX_BODY_BYTES - 1000)),  # just under the limit: judged
    Post(_big_label(MAX_BODY_BYTES)),  # just over: 413
    Post(gzip.compress(b" " * (8 * MAX_BODY_BYTES)), encoding="gzip"),  # 8 MiB from 8 KiB: 413 while reading, not 8 MiB read
    Post(b"\x1f\x8b not gzip", encoding="gzip"),
    Post(json.dumps(payload(alert(fingerprint="surrogate", severity="critical", namespace="team-a", pod="\ud800"))).encode()),
    Post(json.dumps(payload(alert(fingerprint="no-namespace", severity="critical"))).encode()),  # acts on nothing
    Post(json.dumps(payload(alert(starts="9999-12-31T23:59:59-01:00"))).encode()),
    Post(json.dumps(payload(alert(fingerprint="x" * 100_000))).encode()),
    Post(json.dumps(payload(alert(namespace="team-b") | {"labels": {"alertname": "x" * 5000, "namespace": "team-b"}})).encode()),
    Post(json.dumps(payload(alert(severity="critical", namespace="team-a"))).encode(), token=None),
]


# ---------------------------------------------------------------- the properties
@FUZZ
@given(post=posts())
def test_random_requests_get_a_final_answer_with_a_reason(server: Server, post: Post) -> None:
    check(server, post)


@pytest.mark.parametrize("post", [pytest.param(p, id=f"boundary-{i}") for i, p in enumerate(BOUNDARY)])
def test_boundary_requests_get_a_final_answer_with_a_reason(server: Server, post: Post) -> None:
    check(server, post)


@FUZZ
@given(doc=payloads())
def test_payloads_act_only_in_their_own_namespace(server: Server, doc: dict[str, Any]) -> None:
    """Payloads as Alertmanager would send them, labels drawn to match the Rollouts or not: every call is in the
    namespace the alert names (check), and an alert without one never acts."""
    check(server, Post(_encode(doc)))


@FUZZ
@given(post=mutated_payloads().map(Post))
@example(post=Post(json.dumps(payload(alert(severity="critical", namespace="team-a"))).encode()))
def test_mutated_payloads_get_a_final_answer_and_stay_in_their_namespace(server: Server, post: Post) -> None:
    check(server, post)
