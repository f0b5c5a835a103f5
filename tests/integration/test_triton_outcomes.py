"""A/B experiments on the real Triton server (from the nvidia-pytriton wheel): sticky user buckets and
outcomes counted by the revision that served the user.

Two servers (two revisions of one exported repository) sit behind a small router that does what a
Gateway API / Istio / Traefik header match does: requests whose x-fmops-bucket matches CANARY go to
the canary, all others (no header included) to the stable. Recommendations and outcome reports go
through the router with the client's header, so each revision's /metrics must count exactly the
outcomes of the users whose lists it served; a malformed report in a dynamic batch with good ones
fails alone (400 naming the input) and an unknown outcome never becomes a label value.

The header is also the experiment's mark on each request (fmrec.serving.protocol "Experiments"):
Triton forwards it to the models as a request parameter (fmrec.serving.server starts it with the
forwarding flags), and only requests and reports that carried a well-formed bucket count in
fmrec_experiment_requests_total / fmrec_experiment_outcomes_total, over HTTP and gRPC alike."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import textwrap
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from fmrec import checkpoint
from fmrec.data.split import leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import Adapter
from fmrec.serving import client as client_module
from fmrec.serving.client import BUCKET_HEADER, Event, RecommenderClient, bucket, request_arrays
from fmrec.serving.export import export_triton
from fmrec.serving.server import TritonServer
from fmrec.train.pretrain import build_model
from fmrec.vocab import Vocabulary
from tests.integration.helpers import post_together

K, DELAY_US, N_ITEMS = 10, 30_000, 120
OUTCOMES = ("clicked", "played", "added", "skipped", "ignored")
TASKS = ("fm", "liked")
CANARY = r"^1?[0-9]$"  # buckets 0-19: 20% of users
HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}
Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fmrec (an untrained FM and a `liked` adapter: only the counting is under test) and fmrec_outcome."""
    work = tmp_path_factory.mktemp("outcomes")
    split = leave_one_out(generate(n_events=2_000, n_users=60, n_items=N_ITEMS, seed=6))
    torch.manual_seed(0)
    fm = build_model(split.log, d_model=16, n_layers=1, n_heads=2, context_len=8, event_fields=("item",))
    checkpoint.save(fm, work / "fm", {"data": "in-memory"}, Vocabulary.from_log(split.log))
    checkpoint.save_adapter(Adapter(fm, "bottleneck", 4), fm, work / "fm" / "liked", "liked", {})
    export_triton(work / "fm", work / "models", name="fmrec", k=K, adapters={"": work / "fm" / "liked"}, delay_us=DELAY_US)
    return work / "models"


@pytest.fixture(scope="module")
def servers(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TritonServer]]:
    """The stable and the canary revision, each its own Triton on the repository."""
    with TritonServer(repo, tmp_path_factory.mktemp("stable")) as stable, TritonServer(repo, tmp_path_factory.mktemp("canary")) as canary:
        yield {"stable": stable, "canary": canary}


@dataclass
class Router:
    """A header-matching route: x-fmops-bucket matching CANARY to the canary, the rest to the stable."""

    ports: dict[str, int]
    seen: list[tuple[str, str | None, str]] = field(default_factory=list)  # (path, bucket header, side)
    port: int = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def side(self, header: str | None) -> str:
        return "canary" if header is not None and re.search(CANARY, header) else "stable"


@pytest.fixture(scope="module")
def router(servers: dict[str, TritonServer]) -> Iterator[Router]:
    route = Router({side: s.http_port for side, s in servers.items()})

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.forward()

        def do_POST(self) -> None:  # noqa: N802
            self.forward()

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            header = self.headers.get(BUCKET_HEADER)
            side = route.side(header)
            route.seen.append((self.path, header, side))
            conn = http.client.HTTPConnection("127.0.0.1", route.ports[side], timeout=60)
            try:
                conn.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() not in HOP})
                answer = conn.getresponse()
                data = answer.read()
            finally:
                conn.close()
            self.send_response(answer.status)
            for k, v in answer.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    route.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield route
    httpd.shutdown()
    httpd.server_close()


def scrape(server: TritonServer) -> Metrics:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out = {}
    for name, labels, value in re.findall(r'^(\w+)\{([^}]*)\} (\S+)$', text, flags=re.M):
        out[(name, frozenset(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(value)
    return out


def total(m: Metrics, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in m.items() if n == name and labels.items() <= dict(ls).items())


def delta(after: Metrics, before: Metrics, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def history(user: int) -> list[Event]:
    rng = np.random.default_rng(user)
    return [Event(f"i{j}") for j in rng.choice(np.arange(1, N_ITEMS + 1), size=int(rng.integers(1, 12)), replace=False)]


def test_the_repository_serves_both_models_with_every_series_from_start_up(servers: dict[str, TritonServer]) -> None:
    server = servers["stable"]
    index = thttp.InferenceServerClient(server.http_url).get_model_repository_index()
    assert sorted((m["name"], m.get("state")) for m in index) == [("fmrec", "READY"), ("fmrec_outcome", "READY")]
    m = scrape(server)
    outcome_series = {dict(ls)["outcome"]: ls for (n, ls) in m if n == "fmrec_outcomes_total"}
    assert set(outcome_series) == set(OUTCOMES)
    for task in TASKS:
        for outcome in OUTCOMES:
            assert m[("fmrec_outcomes_total", frozenset({"model": "fmrec", "version": "1", "task": task, "outcome": outcome}.items()))] == 0
    assert total(m, "fmrec_outcome_position_count", model="fmrec") == 0
    assert total(m, "fmrec_refused_requests_total", model="fmrec_outcome") == 0
    experiment = {ls: v for (n, ls), v in m.items() if n == "fmrec_experiment_outcomes_total"}
    assert set(experiment) == {frozenset({"model": "fmrec", "version": "1", "task": t, "outcome": o}.items()) for t in TASKS for o in OUTCOMES}
    exposures = {ls: v for (n, ls), v in m.items() if n == "fmrec_experiment_requests_total"}
    assert set(exposures) == {frozenset({"model": "fmrec", "version": "1", "task": t}.items()) for t in TASKS}
    assert not any(experiment.values()) and not any(exposures.values())


def test_outcomes_are_counted_by_the_revision_that_served_the_user(servers: dict[str, TritonServer], router: Router) -> None:
    """80 users recommended and reporting through the route, HTTP; each revision counts the lists it
    served (fmrec_top_score_count: the denominator) and exactly the outcomes of those users."""
    before = {side: scrape(s) for side, s in servers.items()}
    client = RecommenderClient(router.url)
    want: dict[str, Counter[tuple[str, str]]] = {"stable": Counter(), "canary": Counter()}
    served: dict[str, Counter[str]] = {"stable": Counter(), "canary": Counter()}
    positions: dict[str, list[int]] = {"stable": [], "canary": []}
    headers: list[str] = []
    router.seen.clear()
    for u in range(80):
        user, task = f"user-{u}", TASKS[u % 2]
        side = router.side(str(bucket(user)))
        ranked = client.recommend(history(u), task="" if task == "fm" else task, k=K, user=user)
        assert len(ranked.items) == K
        served[side][task] += 1
        headers.append(str(bucket(user)))
        for j in range(u % 3 + 1):  # 1-3 outcomes per list, some with the position
            outcome = OUTCOMES[(u + j) % len(OUTCOMES)]
            position = (u + 2 * j) % K + 1 if (u + j) % 4 else None
            client.report(outcome, position=position, user=user, task=task if j % 2 else ("" if task == "fm" else task))
            want[side][task, outcome] += 1
            headers.append(str(bucket(user)))
            if position is not None:
                positions[side].append(position)
    assert [h for _, h, _ in router.seen] == headers, "every request should carry its user's bucket"
    assert Counter(s for _, _, s in router.seen) == {side: served[side].total() + want[side].total() for side in ("stable", "canary")}
    assert 5 <= sum(served["canary"].values()) <= 30, "about 20% of the users should be in the canary's buckets"
    for side, server in servers.items():
        after = scrape(server)
        for task in TASKS:
            assert delta(after, before[side], "fmrec_top_score_count", model="fmrec", task=task) == served[side][task], (side, task)
            # every user here carried a bucket: each list is an exposure, each outcome an experiment outcome
            assert delta(after, before[side], "fmrec_experiment_requests_total", model="fmrec", task=task) == served[side][task]
            for outcome in OUTCOMES:
                got = delta(after, before[side], "fmrec_outcomes_total", model="fmrec", version="1", task=task, outcome=outcome)
                assert got == want[side][task, outcome], (side, task, outcome)
                got = delta(after, before[side], "fmrec_experiment_outcomes_total", model="fmrec", version="1", task=task, outcome=outcome)
                assert got == want[side][task, outcome], (side, task, outcome)
        assert delta(after, before[side], "fmrec_outcome_position_count", model="fmrec") == len(positions[side])
        assert delta(after, before[side], "fmrec_outcome_position_sum", model="fmrec") == sum(positions[side])
        for le, below in (("1", 1), ("3", 3), ("5", 5), ("10", 10)):
            assert delta(after, before[side], "fmrec_outcome_position_bucket", model="fmrec", le=le) == sum(
                p <= below for p in positions[side]), (side, le)
        assert total(after, "nv_inference_request_failure", model="fmrec_outcome") == 0


def test_recommend_many_sends_one_request_per_bucket_each_with_its_header(router: Router) -> None:
    client = RecommenderClient(router.url)
    users = [f"user-{u}" for u in range(12)]
    histories = [history(u) for u in range(12)]
    router.seen.clear()
    many = client.recommend_many(histories, k=K, users=users)
    assert sorted(str(h) for _, h, _ in router.seen) == sorted({str(bucket(u)) for u in users})
    router.seen.clear()
    alone = [client.recommend(h, k=K, user=u) for h, u in zip(histories, users, strict=True)]
    assert [r.items for r in many] == [r.items for r in alone]
    assert [s for _, _, s in router.seen] == [router.side(str(bucket(u))) for u in users]


def test_reports_over_grpc_are_counted_and_a_refused_one_raises_naming_the_input(servers: dict[str, TritonServer]) -> None:
    server = servers["canary"]
    before = scrape(server)
    grpc = RecommenderClient(server.grpc_url, protocol="grpc")
    grpc.report("added", position=K, user="user-3", task="liked")
    with pytest.raises(InferenceServerException, match=r"OUTCOME 'bought' is not an outcome this model counts: send one of "
                                                       r"\['clicked', 'played', 'added', 'skipped', 'ignored'\]"):
        grpc.report("bought", user="user-3")
    with pytest.raises(InferenceServerException, match=rf"POSITION={K + 1} is outside 1\.\.{K}"):
        RecommenderClient(server.http_url).report("played", position=K + 1)
    after = scrape(server)
    assert delta(after, before, "fmrec_outcomes_total", task="liked", outcome="added") == 1
    assert delta(after, before, "fmrec_outcomes_total") == 1
    assert delta(after, before, "fmrec_refused_requests_total", model="fmrec_outcome", input="OUTCOME") == 1
    assert delta(after, before, "fmrec_refused_requests_total", model="fmrec_outcome", input="POSITION") == 1


def _body(outcome: bytes, position: int, task: bytes, position_type: str = "INT32") -> bytes:
    """KServe v2 JSON with every input; BYTES values as they are, invalid UTF-8 included (Triton's parser passes it on)."""
    def text(v: bytes) -> bytes:
        return b'"' + b"".join(b"\\" + bytes([c]) if c in b'"\\' else b"\\u%04x" % c if c < 0x20 else bytes([c]) for c in v) + b'"'

    return (b'{"inputs": [{"name": "OUTCOME", "datatype": "BYTES", "shape": [1, 1], "data": [' + text(outcome) + b']}, '
            b'{"name": "POSITION", "datatype": "' + position_type.encode() + b'", "shape": [1, 1], "data": [%d]}, ' % position +
            b'{"name": "TASK", "datatype": "BYTES", "shape": [1, 1], "data": [' + text(task) + b']}]}')


def _stats(server: TritonServer) -> tuple[int, int]:
    s = thttp.InferenceServerClient(server.http_url).get_inference_statistics("fmrec_outcome")["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


BAD = [  # (id, body, the input the 4xx must name, counted in fmrec_refused_requests_total by the model)
    ("unknown-outcome", _body(b"bought", 1, b""), r"^OUTCOME 'bought' is not an outcome this model counts: send one of "
                                                    r"\['clicked', 'played', 'added', 'skipped', 'ignored'\]$", "OUTCOME"),
    ("outcome-not-utf8", _body(b"pl\xffyed", 1, b""), r"^OUTCOME\[0, 0\] is not UTF-8", "OUTCOME"),
    ("position-0", _body(b"played", 0, b""), rf"^POSITION=0 is outside 1\.\.{K}", "POSITION"),
    ("position-too-large", _body(b"played", K + 1, b""), rf"^POSITION={K + 1} is outside 1\.\.{K}", "POSITION"),
    ("unknown-task", _body(b"played", 1, b"nope"), r"^unknown TASK 'nope': this model serves \['fm', 'liked'\]$", "TASK"),
    ("position-int64", _body(b"played", 1, b"", "INT64"), r"'POSITION'.*INT64", ""),  # Triton's own check: never reaches the model
]


@pytest.mark.parametrize(("body", "message", "counted"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_malformed_outcome_in_a_batch_fails_alone_and_adds_no_label(servers: dict[str, TritonServer], body: bytes, message: str,
                                                                       counted: str) -> None:
    server = servers["stable"]
    good = [_body(b"played", 2, b""), _body(b"skipped", 1, b"liked"), _body(b"played", 7, b"fm")]
    before, stats = scrape(server), _stats(server)
    answers = post_together(server.http_port, "fmrec_outcome", [good[0], body, good[1], good[2]])
    assert [status for status, _ in answers] == [200, 400, 200, 200], answers
    assert re.search(message, answers[1][1]["error"]), answers[1]
    assert all(a["outputs"][0]["name"] == "ACK" and a["outputs"][0]["data"] == [1] for status, a in answers if status == 200)
    requests, executions = (a - b for a, b in zip(_stats(server), stats, strict=True))
    assert executions < requests, "the good and the bad requests should have shared a dynamic batch"
    after = scrape(server)
    assert delta(after, before, "fmrec_outcomes_total", model="fmrec", task="fm", outcome="played") == 2
    assert delta(after, before, "fmrec_outcomes_total", model="fmrec", task="liked", outcome="skipped") == 1
    assert delta(after, before, "fmrec_outcomes_total") == 3
    assert delta(after, before, "fmrec_experiment_outcomes_total") == 0, "no report carried a bucket"
    assert {dict(ls)["outcome"] for n, ls in after if n == "fmrec_outcomes_total"} == set(OUTCOMES)
    assert not any("bought" in v or "nope" in v for _, ls in after for _, v in ls), "a refused value became a label value"
    refused = delta(after, before, "fmrec_refused_requests_total", model="fmrec_outcome")
    assert refused == (1 if counted else 0)
    if counted:
        assert delta(after, before, "fmrec_refused_requests_total", model="fmrec_outcome", input=counted) == 1
    assert total(after, "nv_inference_request_failure", model="fmrec_outcome") == 0


def test_the_documented_curl_calls_work_through_the_route(servers: dict[str, TritonServer], router: Router) -> None:
    """The module docstring's two curl commands, run as written, land on the user's revision."""
    doc = client_module.__doc__ or ""
    block = doc[doc.index("The same two calls with curl"):].split("\n", 2)[2]
    script = textwrap.dedent(block)
    assert script.count("curl ") == 2 and "x-fmops-bucket: $B" in script
    user = "user-3"  # bucket 1: the canary's
    side = router.side(str(bucket(user)))
    assert side == "canary"
    before = scrape(servers[side])
    out = subprocess.run(["bash", "-ec", script], env={**os.environ, "HOST": router.url, "USER_ID": user},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    recommended, end = json.JSONDecoder().raw_decode(out.stdout)
    ack, end = json.JSONDecoder().raw_decode(out.stdout, end)
    assert not out.stdout[end:].strip()
    assert recommended["model_name"] == "fmrec" and {o["name"] for o in recommended["outputs"]} >= {"TOPK_ITEMS", "TOPK_SCORES"}
    assert ack["model_name"] == "fmrec_outcome" and ack["outputs"][0]["data"] == [1]
    after = scrape(servers[side])
    assert delta(after, before, "fmrec_outcomes_total", task="fm", outcome="played") == 1
    assert delta(after, before, "fmrec_outcome_position_bucket", outcome="played", le="3") == 1
    assert delta(after, before, "fmrec_top_score_count", model="fmrec") == 1
    assert delta(after, before, "fmrec_experiment_requests_total", model="fmrec", task="fm") == 1
    assert delta(after, before, "fmrec_experiment_outcomes_total", model="fmrec", task="fm", outcome="played") == 1
    assert delta(after, before, "fmrec_experiment_outcomes_total") == 1


# ---- experiments: only requests and reports with a bucket count as the experiment's ---------------------------------------

def _recommend_body(users: list[int], k: int = K) -> bytes:
    """KServe v2 JSON of one recommend request with these users' histories (ITEMS and K)."""
    arrays = request_arrays([history(u) for u in users], k=k)
    items = arrays["ITEMS"]
    return json.dumps({"inputs": [
        {"name": "ITEMS", "datatype": "BYTES", "shape": list(items.shape), "data": [v.decode() for v in items.ravel()]},
        {"name": "K", "datatype": "INT32", "shape": list(arrays["K"].shape), "data": arrays["K"].ravel().tolist()}]}).encode()


def test_only_requests_and_reports_with_a_bucket_count_in_the_experiment(servers: dict[str, TritonServer]) -> None:
    """The stable revision serves users in the experiment (with the header) and users in none (without):
    fmrec_top_score_count and fmrec_outcomes_total count both, the experiment counters exactly the
    first, per task and outcome."""
    server = servers["stable"]
    before = scrape(server)
    http = RecommenderClient(server.http_url)
    exposed: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    want: Counter[tuple[str, str]] = Counter()
    reported: Counter[tuple[str, str]] = Counter()
    for u in range(24):
        user, task, in_experiment = f"exp-{u}", TASKS[u % 2], u % 3 != 0
        tname = "" if task == "fm" else task
        if u % 4 == 0:  # two users in one request, each with its own bucket header (or none)
            http.recommend_many([history(u), history(u + 100)], task=tname, k=K,
                                users=[user, f"exp-{u + 100}"] if in_experiment else None)
            rows = 2
        else:
            http.recommend(history(u), task=tname, k=K, user=user if in_experiment else None)
            rows = 1
        answered[task] += rows
        exposed[task] += rows if in_experiment else 0
        for j in range(u % 3 + 1):
            outcome = OUTCOMES[(u + j) % len(OUTCOMES)]
            http.report(outcome, position=j + 1, user=user if in_experiment else None, task=task)
            reported[task, outcome] += 1
            want[task, outcome] += 1 if in_experiment else 0
    after = scrape(server)
    assert 0 < exposed.total() < answered.total() and 0 < want.total() < reported.total()
    for task in TASKS:
        assert delta(after, before, "fmrec_top_score_count", model="fmrec", task=task) == answered[task], task
        assert delta(after, before, "fmrec_experiment_requests_total", model="fmrec", version="1", task=task) == exposed[task], task
        for outcome in OUTCOMES:
            labels = {"model": "fmrec", "version": "1", "task": task, "outcome": outcome}
            assert delta(after, before, "fmrec_outcomes_total", **labels) == reported[task, outcome], (task, outcome)
            assert delta(after, before, "fmrec_experiment_outcomes_total", **labels) == want[task, outcome], (task, outcome)


BAD_BUCKETS: list[tuple[str, list[tuple[str, str | bytes]]]] = [  # id, header lines
    ("word", [(BUCKET_HEADER, "abc")]),
    ("100", [(BUCKET_HEADER, "100")]),
    ("negative", [(BUCKET_HEADER, "-3")]),
    ("leading-zero", [(BUCKET_HEADER, "07")]),
    ("empty", [(BUCKET_HEADER, "")]),
    ("two-values", [(BUCKET_HEADER, "3"), (BUCKET_HEADER, "4")]),
    ("not-utf8", [(BUCKET_HEADER, b"\xe9")]),
]


@pytest.mark.parametrize("header", [b[1] for b in BAD_BUCKETS], ids=[b[0] for b in BAD_BUCKETS])
def test_a_malformed_bucket_is_answered_and_counts_no_exposure(servers: dict[str, TritonServer],
                                                                header: list[tuple[str, str | bytes]]) -> None:
    """Sent together (batched where Triton can) with requests carrying a good bucket (in any case of the
    name), none, and a longer header name: the malformed one is answered like the others and counts
    like the one without a bucket; the same for outcome reports. No 4xx, no failure, no refusal."""
    server = servers["canary"]
    before = scrape(server)
    lines: list[list[tuple[str, str | bytes]]] = [[(BUCKET_HEADER, "17")], header, [], [("X-Fmops-Bucket", "5")],
                                                  [(BUCKET_HEADER + "-other", "1")]]
    answers = post_together(server.http_port, "fmrec", [_recommend_body([1, 2]), _recommend_body([3]), _recommend_body([4]),
                                                        _recommend_body([5]), _recommend_body([6])], lines)
    assert [status for status, _ in answers] == [200] * 5, answers
    assert [a["outputs"][0]["shape"] for _, a in answers] == [[2, K], [1, K], [1, K], [1, K], [1, K]]
    reports = post_together(server.http_port, "fmrec_outcome", [_body(b"played", 1, b"liked")] * 5, lines)
    assert [status for status, _ in reports] == [200] * 5, reports
    after = scrape(server)
    assert delta(after, before, "fmrec_top_score_count", model="fmrec") == 6
    assert delta(after, before, "fmrec_experiment_requests_total", model="fmrec", task="fm") == 3  # the rows of "17" and "5"
    assert delta(after, before, "fmrec_outcomes_total", model="fmrec", task="liked", outcome="played") == 5
    assert delta(after, before, "fmrec_experiment_outcomes_total", model="fmrec", task="liked", outcome="played") == 2
    assert delta(after, before, "fmrec_experiment_outcomes_total") == 2
    assert delta(after, before, "fmrec_refused_requests_total") == 0
    assert total(after, "nv_inference_request_failure") == 0


def test_grpc_metadata_counts_as_the_bucket(servers: dict[str, TritonServer]) -> None:
    """The client over gRPC sends the bucket as metadata: counted like the HTTP header; without it,
    or with a malformed value, answered and not counted."""
    server = servers["canary"]
    before = scrape(server)
    grpc = RecommenderClient(server.grpc_url, protocol="grpc")
    assert len(grpc.recommend(history(7), task="liked", k=K, user="user-7").items) == K
    grpc.recommend_many([history(8), history(9)], k=K, users=["user-8", "user-9"])
    grpc.recommend(history(10), k=K)  # no experiment
    grpc.report("clicked", position=2, user="user-7", task="liked")
    grpc.report("skipped", user="user-8")
    grpc.report("skipped")  # no experiment
    raw = tgrpc.InferenceServerClient(server.grpc_url)
    items = tgrpc.InferInput("ITEMS", [1, 2], "BYTES")
    items.set_data_from_numpy(np.array([[b"i1", b"i2"]], dtype=np.object_))
    raw.infer("fmrec", [items], headers={BUCKET_HEADER: "x1"})  # malformed: answered, no exposure
    outcome = tgrpc.InferInput("OUTCOME", [1, 1], "BYTES")
    outcome.set_data_from_numpy(np.array([[b"played"]], dtype=np.object_))
    raw.infer("fmrec_outcome", [outcome], headers={BUCKET_HEADER: "100"})
    after = scrape(server)
    assert delta(after, before, "fmrec_top_score_count", model="fmrec") == 5
    assert delta(after, before, "fmrec_experiment_requests_total", model="fmrec", task="liked") == 1
    assert delta(after, before, "fmrec_experiment_requests_total", model="fmrec", task="fm") == 2
    assert delta(after, before, "fmrec_outcomes_total") == 4
    assert delta(after, before, "fmrec_experiment_outcomes_total", task="liked", outcome="clicked") == 1
    assert delta(after, before, "fmrec_experiment_outcomes_total", task="fm", outcome="skipped") == 1
    assert delta(after, before, "fmrec_experiment_outcomes_total") == 2
