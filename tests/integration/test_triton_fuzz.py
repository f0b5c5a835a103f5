"""Fuzzing the served model on the real Triton server: malformed, boundary and hostile requests
sent in one dynamic batch with good requests of other clients.

Every example is one batch: 1-3 good requests from a fixed pool (whose answers alone are known),
1-3 bad or boundary requests drawn by hypothesis, all written to the server within a millisecond,
and the model waits DELAY_US for a batch to fill, so those that reach the model share one
execute() call (Triton batches only requests with the same inputs: every good request sends all
of them, optional ones too). Then:

- every good request is answered 200 with its answer alone (fmrec.serving.triton_model);
- every malformed request gets a 4xx whose message names the input at fault, from the model
  (a RequestError) or from Triton itself (a wrong datatype, shape or input name);
- every valid boundary request (empty history, exactly the limits, unknown or unicode values,
  the first and last accepted timestamps) is answered 200;
- Triton never counts a failure for the model (nv_inference_request_failure stays 0).

One exception is Triton's, not the model's: a body that is not KServe v2 JSON (bad JSON, a
number outside INT64, a string where an array belongs, a shape that does not match the numbers
in "data") is refused by Triton's HTTP front end with a 500 "Unable to parse ..." / "failed to
parse the request JSON buffer" (Triton 2.51). It never reaches the model, fails no other request
and is not counted in nv_inference_request_*; these requests are drawn too, and must get that
answer or a 4xx.

FMOP_FUZZ_EXAMPLES batches (default 400: about 1,600 requests, under two minutes on 2 cores),
derandomized: the same examples on every run unless FMOP_FUZZ_SEED picks other ones (`make fuzz`
runs more).
"""

from __future__ import annotations

import json
import os
import re
import struct
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import Adapter
from fmrec.serving.export import export_triton
from fmrec.serving.server import TritonServer
from fmrec.train.loop import TrainSettings
from fmrec.train.pretrain import build_model, pretrain
from fmrec.vocab import Vocabulary
from tests.integration.helpers import post_together
from tests.model.serving_cases import assert_same_answer, raw_history, with_device

EXAMPLES = int(os.environ.get("FMOP_FUZZ_EXAMPLES", "400"))
SEED = os.environ.get("FMOP_FUZZ_SEED")
T, K, MAX_BATCH, DELAY_US = 12, 10, 64, 30_000
FIELDS = ("item", "action", "timeGap", "hourOfDay", "relativeTime", "device")  # TIMESTAMPS and ACTIONS required
MODEL = "fuzz"
# The documented limits (tests/model/test_serving_protocol.py checks fmrec.serving.protocol states the same).
MAX_EVENTS, MAX_EXCLUDE, MAX_REQUEST_VALUES, MAX_VALUE_BYTES = 10_000, 10_000, 50_000, 1_024
MIN_TIMESTAMP, MAX_TIMESTAMP = -62_135_596_800, 253_402_300_799
UNPARSABLE = r"^(Unable to parse|failed to parse the request JSON buffer)"  # Triton's HTTP front end, answered 500


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # as sent; BYTES values are bytes, numeric values int or float
    shape: tuple[int, ...]
    values: tuple[Any, ...]  # flat, row-major


@dataclass(frozen=True)
class Request:
    tensors: tuple[Tensor, ...]
    binary: bool = False  # the binary tensor extension of KServe v2 HTTP, else JSON
    body: bytes | None = None  # sent as it is instead of the tensors
    expect: str = "ok"  # ok (200) | refused (4xx naming `names`) | unparsable (Triton's front end)
    names: str = ""  # what the error message must name
    kind: str = "good"

    def tensor(self, name: str) -> Tensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def get(self, name: str) -> Tensor:
        t = self.tensor(name)
        assert t is not None, f"the request has no {name}"
        return t

    def with_tensor(self, t: Tensor) -> tuple[Tensor, ...]:
        return (*(x for x in self.tensors if x.name != t.name), t)

    def without(self, name: str) -> tuple[Tensor, ...]:
        return tuple(x for x in self.tensors if x.name != name)


def _json_bytes(v: bytes) -> bytes:
    """A JSON string literal holding exactly these bytes, invalid UTF-8 included (Triton's parser passes them on)."""
    out = bytearray(b'"')
    for ch in v:
        out += b"\\" + bytes([ch]) if ch in b'"\\' else b"\\u%04x" % ch if ch < 0x20 else bytes([ch])
    return bytes(out + b'"')


def _json_value(v: Any) -> bytes:
    return _json_bytes(v) if isinstance(v, bytes) else json.dumps(v).encode()


def _raw(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in t.values)
    dtype = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4"}[t.datatype]
    return np.asarray(t.values, dtype=dtype).tobytes()


def encode(req: Request) -> tuple[bytes, dict[str, str]]:
    """The HTTP body and headers of a request."""
    if req.body is not None:
        return req.body, {"Content-Type": "application/json"}
    head = {"name": "", "datatype": "", "shape": []}
    if not req.binary:
        parts = [json.dumps({**head, "name": t.name, "datatype": t.datatype, "shape": list(t.shape)}).encode()[:-1]
                 + b', "data": [' + b",".join(_json_value(v) for v in t.values) + b"]}" for t in req.tensors]
        return b'{"inputs": [' + b", ".join(parts) + b"]}", {"Content-Type": "application/json"}
    raws = [_raw(t) for t in req.tensors]
    header = json.dumps({"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                                     "parameters": {"binary_data_size": len(r)}} for t, r in zip(req.tensors, raws, strict=True)]}).encode()
    return header + b"".join(raws), {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def exchange(port: int, requests: list[Request]) -> list[tuple[int, dict[str, Any]]]:
    """Write every request on its own connection first, then read the answers: one dynamic batch."""
    encoded = [encode(r) for r in requests]
    return post_together(port, MODEL, [body for body, _ in encoded], [list(headers.items()) for _, headers in encoded])


def answer_of(body: dict[str, Any]) -> list[tuple[list[str], list[float]]]:
    """(items, scores) per user row of a 200 answer."""
    outputs = {o["name"]: o for o in body["outputs"]}
    rows, k = outputs["TOPK_ITEMS"]["shape"]
    items, scores = outputs["TOPK_ITEMS"]["data"], outputs["TOPK_SCORES"]["data"]
    assert outputs["USER_EMBEDDING"]["shape"][0] == rows
    return [(items[b * k:(b + 1) * k], scores[b * k:(b + 1) * k]) for b in range(rows)]


# ---- the model, the server, the good requests ------------------------------------------------------------------

@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return leave_one_out(with_device(generate(n_events=3_000, n_users=100, n_items=150, seed=3)))


@pytest.fixture(scope="module")
def server(split: LeaveOneOut, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A small FM with time, action and device fields and a `liked` adapter, exported with a long queue delay."""
    work = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = build_model(split.log, d_model=16, n_layers=1, n_heads=2, context_len=T, event_fields=FIELDS)
    pretrain(model, split, TrainSettings(epochs=1, batch_size=64, stride=T), log=lambda m: None)
    checkpoint.save(model, work / "fm", {"data": "in-memory"}, Vocabulary.from_log(split.log, split.train_mask()))
    adapter = Adapter(model, "bottleneck", 4)
    torch.nn.init.normal_(adapter.up.weight, std=0.3)
    torch.nn.init.normal_(adapter.item_bias, std=0.3)
    checkpoint.save_adapter(adapter, model, work / "fm" / "liked", "liked", {})
    export_triton(work / "fm", work / "models", name=MODEL, k=K, adapters={"": work / "fm" / "liked"},
                  max_batch=MAX_BATCH, delay_us=DELAY_US)
    with TritonServer(work / "models", work) as s:
        yield s


def _rows(split: LeaveOneOut, users: list[int], task: str = "fm", k: int = K, exclude: tuple[bytes, ...] = (b"",),
          shuffle: int | None = None, extra: tuple[bytes, ...] = ()) -> tuple[Tensor, ...]:
    """The tensors of one request for these users' raw histories (rows padded with "" items).

    Every input is sent, optional ones too: Triton batches only requests with the same inputs."""
    hs = [raw_history(split, u) for u in users]
    n = max(len(h["items"]) + len(extra) for h in hs)
    cols: dict[str, list[Any]] = {"ITEMS": [], "TIMESTAMPS": [], "ACTIONS": [], "DEVICE": []}
    for h in hs:
        items = [str(i).encode() for i in h["items"]] + list(extra)
        ts = [int(t) for t in h["timestamps"]] + [int(h["timestamps"][-1]) + i for i in range(len(extra))]
        acts = [str(a).encode() for a in h["actions"]] + [b"5"] * len(extra)
        dev = [str(d).encode() for d in h["device"]] + [b"tv"] * len(extra)
        order = np.random.default_rng(shuffle).permutation(len(items)) if shuffle is not None else range(len(items))
        pad = n - len(items)
        for name, col, fill in (("ITEMS", items, b""), ("TIMESTAMPS", ts, 0), ("ACTIONS", acts, b""), ("DEVICE", dev, b"")):
            cols[name] += [col[i] for i in order] + [fill] * pad
    B = len(users)
    out = [Tensor("ITEMS", "BYTES", (B, n), tuple(cols["ITEMS"])), Tensor("TIMESTAMPS", "INT64", (B, n), tuple(cols["TIMESTAMPS"])),
           Tensor("ACTIONS", "BYTES", (B, n), tuple(cols["ACTIONS"])), Tensor("DEVICE", "BYTES", (B, n), tuple(cols["DEVICE"]))]
    out += [Tensor("TASK", "BYTES", (B, 1), (task.encode(),) * B), Tensor("K", "INT32", (B, 1), (k,) * B),
            Tensor("EXCLUDE", "BYTES", (B, len(exclude)), exclude * B)]
    return tuple(out)


@pytest.fixture(scope="module")
def pool(split: LeaveOneOut, server: TritonServer) -> list[tuple[Request, list[tuple[list[str], list[float]]]]]:
    """Good requests of other clients, each with its answer when sent alone."""
    u = [int(x) for x in split.test_users[:8]]
    ids = split.log.item_ids
    requests = [
        Request(_rows(split, [u[0]])),
        Request(_rows(split, [u[1]], task="liked", k=5), binary=True),
        Request(_rows(split, [u[2]], exclude=(ids[0].encode(), ids[1].encode(), b"no-such-item"), shuffle=2)),
        Request(_rows(split, [u[3], u[4]], k=7), binary=True),
        Request(_rows(split, [u[5]], task="liked", extra=(b"never-seen", "caf\u00e9".encode())), binary=False),
        Request(_rows(split, [u[0]]), binary=True),  # the same user as the first, the other encoding
        Request(_rows(split, [u[6], u[7]], task="liked", k=1, shuffle=7)),
    ]
    out = []
    for r in requests:
        (status, body), = exchange(server.http_port, [r])
        assert status == 200, body
        out.append((r, answer_of(body)))
    assert out[0][1] == out[5][1], "JSON and binary encodings of one request should get one answer"
    return out


# ---- bad and boundary requests --------------------------------------------------------------------------------------

NOT_UTF8 = (b"\xff", b"\x80", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xfe\xfe\xff\xff")
BYTES_INPUTS = ("ITEMS", "ACTIONS", "DEVICE", "TASK", "EXCLUDE")
PER_EVENT = ("ITEMS", "TIMESTAMPS", "ACTIONS", "DEVICE")
KINDS = (  # malformed: a 4xx naming the input
    "not-utf8", "value-too-long", "too-many-events", "too-many-values", "too-many-excluded", "timestamp-out-of-range",
    "k-out-of-range", "unknown-task", "wrong-datatype", "misaligned", "shape-not-data", "missing", "too-many-users", "no-users",
    "unknown-input", "duplicate-input", "not-v2-json")
BOUNDARY_KINDS = (  # valid at an edge of the contract: a 200
    "empty-history", "most-events", "most-excluded", "longest-value", "any-text", "edge-timestamps", "edge-k")


def _set(t: Tensor, i: int, v: Any) -> Tensor:
    return replace(t, values=(*t.values[:i], v, *t.values[i + 1:]))


def _events(base: Request, n: int, item: Callable[[int], bytes], users: int = 1) -> tuple[Tensor, ...]:
    """The base's first user's other inputs, for `users` users with n events each (items item(i))."""
    cols = {"ITEMS": ("BYTES", tuple(item(i) for i in range(n))), "TIMESTAMPS": ("INT64", tuple(10 ** 9 + i for i in range(n))),
            "ACTIONS": ("BYTES", (b"4",) * n), "DEVICE": ("BYTES", (b"tv",) * n)}
    rest = tuple(replace(t, shape=(users, t.shape[1]), values=t.values[:t.shape[1]] * users) for t in base.tensors
                 if t.name not in PER_EVENT)
    return (*(Tensor(name, dt, (users, n), v * users) for name, (dt, v) in cols.items()), *rest)


@st.composite
def bad_request(draw: st.DrawFn, base: Request) -> Request:
    kind = draw(st.sampled_from(KINDS))
    binary = draw(st.booleans())
    items = base.get("ITEMS")
    B, L = items.shape
    if kind == "not-utf8":
        t = base.get(draw(st.sampled_from(BYTES_INPUTS)))
        i = draw(st.integers(0, len(t.values) - 1))
        plain = st.binary(max_size=3).filter(lambda b: b.isascii())  # around the bad bytes, never completing them
        v = draw(plain) + draw(st.sampled_from(NOT_UTF8)) + draw(plain)
        return Request(base.with_tensor(_set(t, i, v)), binary, expect="refused", names=rf"^(user row \d: )?{t.name}\[", kind=kind)
    if kind == "value-too-long":
        t = base.get(draw(st.sampled_from(BYTES_INPUTS)))
        n = draw(st.integers(MAX_VALUE_BYTES + 1, 4 * MAX_VALUE_BYTES))
        return Request(base.with_tensor(_set(t, draw(st.integers(0, len(t.values) - 1)), b"a" * n)), binary,
                       expect="refused", names=rf"{t.name}\[.*{n} bytes", kind=kind)
    if kind == "too-many-events":
        n = draw(st.integers(MAX_EVENTS + 1, MAX_EVENTS + 50))
        return Request(_events(base, n, lambda i: b"i%d" % (i % 150 + 1)), binary, expect="refused", names=rf"ITEMS has {n} events",
                       kind=kind)
    if kind == "too-many-values":
        users = draw(st.integers(6, 8))
        n = draw(st.integers(MAX_REQUEST_VALUES // users + 1, MAX_EVENTS))
        return Request(_events(base, n, lambda i: b"i%d" % (i % 150 + 1), users), binary, expect="refused",
                       names=rf"ITEMS has {users} users x {n} events", kind=kind)
    if kind == "too-many-excluded":
        n = draw(st.integers(MAX_EXCLUDE + 1, MAX_EXCLUDE + 50))
        t = Tensor("EXCLUDE", "BYTES", (B, n), tuple(b"i%d" % (i % 150 + 1) for i in range(n)) * B)
        return Request(base.with_tensor(t), binary, expect="refused", names=rf"EXCLUDE has {n} item IDs", kind=kind)
    if kind == "timestamp-out-of-range":
        ts = base.get("TIMESTAMPS")
        kept = [i for i, v in enumerate(items.values) if v]
        v = draw(st.one_of(st.integers(-2 ** 63, MIN_TIMESTAMP - 1), st.integers(MAX_TIMESTAMP + 1, 2 ** 63 - 1),
                           st.sampled_from([-2 ** 63, 2 ** 63 - 1, MIN_TIMESTAMP - 1, MAX_TIMESTAMP + 1, 1_700_000_000_000])))
        return Request(base.with_tensor(_set(ts, draw(st.sampled_from(kept)), v)), binary, expect="refused", names=r"TIMESTAMPS has",
                       kind=kind)
    if kind == "k-out-of-range":
        k = draw(st.one_of(st.integers(-2 ** 31, -1), st.integers(K + 1, 2 ** 31 - 1), st.sampled_from([-1, K + 1, -2 ** 31, 2 ** 31 - 1])))
        return Request(base.with_tensor(Tensor("K", "INT32", (B, 1), (k,) * B)), binary, expect="refused", names=rf"K={k} is outside",
                       kind=kind)
    if kind == "unknown-task":
        task = draw(st.text(max_size=20).filter(lambda s: s not in ("", "fm", "liked")))
        return Request(base.with_tensor(Tensor("TASK", "BYTES", (B, 1), (task.encode(),) * B)), binary, expect="refused",
                       names=r"unknown TASK", kind=kind)
    if kind == "wrong-datatype":
        t = draw(st.sampled_from([x for x in base.tensors if x.values]))
        dt = draw(st.sampled_from([d for d in ("BYTES", "INT64", "INT32", "FP32") if d != t.datatype]))
        value = {"BYTES": b"1", "INT64": 1, "INT32": 1, "FP32": 1.5}[dt]
        return Request(base.with_tensor(replace(t, datatype=dt, values=(value,) * len(t.values))), binary, expect="refused",
                       names=rf"'{t.name}' data-type is '{dt}'", kind=kind)
    if kind == "misaligned":
        t = base.get(draw(st.sampled_from(PER_EVENT[1:])))
        n = draw(st.integers(0, L + 3).filter(lambda x: x != L))
        fill: Any = 0 if t.datatype == "INT64" else b"x"
        return Request(base.with_tensor(replace(t, shape=(B, n), values=(fill,) * (B * n))), binary, expect="refused",
                       names=rf"{t.name} has shape \[{B}, {n}\]", kind=kind)
    if kind == "shape-not-data":
        t = draw(st.sampled_from(base.tensors))
        extra = draw(st.integers(1, 3))
        shape = (*t.shape[:-1], t.shape[-1] + extra)  # numbers in JSON: Triton's front end finds it (a 500, see above)
        return Request(base.with_tensor(replace(t, shape=shape)), binary, expect="refused" if binary or t.datatype == "BYTES" else "unparsable",
                       names=rf"'{t.name}'", kind=kind)
    if kind == "missing":
        name = draw(st.sampled_from(["ITEMS", "TIMESTAMPS", "ACTIONS"]))
        return Request(base.without(name), binary, expect="refused", names=rf"{name}", kind=kind)
    if kind == "too-many-users":
        n = draw(st.integers(MAX_BATCH + 1, MAX_BATCH + 20))
        return Request((Tensor("ITEMS", "BYTES", (n, 1), (b"i1",) * n), Tensor("TIMESTAMPS", "INT64", (n, 1), (10 ** 9,) * n),
                        Tensor("ACTIONS", "BYTES", (n, 1), (b"4",) * n)), binary, expect="refused", names=r"batch-size must be <= 64",
                       kind=kind)
    if kind == "no-users":
        return Request(tuple(replace(t, shape=(0, *t.shape[1:]), values=()) for t in base.tensors), binary, expect="refused",
                       names=r"ITEMS|input '[A-Z]+'", kind=kind)
    if kind == "unknown-input":
        name = draw(st.sampled_from(["FOO", "items", "USER", "TOPK_ITEMS"]))
        return Request(base.with_tensor(Tensor(name, "INT64", (B, 1), (1,) * B)), binary, expect="refused", names=name, kind=kind)
    if kind == "duplicate-input":
        t = draw(st.sampled_from(base.tensors))
        return Request((*base.tensors, t), binary, expect="refused", names=rf"'{t.name}' already exists", kind=kind)
    if kind == "not-v2-json":
        body, _ = encode(replace(base, binary=False))
        garbage = draw(st.one_of(
            st.just(body[:draw(st.integers(0, len(body) - 1))]),  # cut short
            st.sampled_from([b'{"inputs": [{"name": "TIMESTAMPS", "datatype": "INT64", "shape": [1, 1], "data": [1.5]}]}', b"[]", b'{"inputs": {}}', b'{"inputs": [{"name": 5}]}', b'{"inputs": [{"name": "ITEMS", "datatype": "BYTES", '
                             b'"shape": [1, -1], "data": []}]}', b'{"inputs": [{"name": "ITEMS", "datatype": "BYTES", "shape": [1, 1], '
                             b'"data": [5]}]}', b'{"inputs": [{"name": "TIMESTAMPS", "datatype": "INT64", "shape": [1, 1], '
                             b'"data": [9223372036854775808]}]}', b'{"inputs": [{"name": "ITEMS", "datatype": "BYTES", "shape": [1, 1], '
                             b'"data": ["\\ud800"]}]}']),
            st.binary(min_size=1, max_size=64).filter(lambda b: not b.strip().startswith((b"{", b"["))),
        ))
        return Request((), body=garbage, expect="unparsable", kind=kind)
    raise AssertionError(kind)


@st.composite
def boundary_request(draw: st.DrawFn, base: Request) -> Request:
    """A valid request at an edge of the contract: answered 200 (its answer is not compared)."""
    kind = draw(st.sampled_from(BOUNDARY_KINDS))
    binary = draw(st.booleans())
    B = base.get("ITEMS").shape[0]
    if kind == "empty-history":
        tensors: tuple[Tensor, ...] = tuple(replace(t, shape=(B, 0), values=()) if t.name in PER_EVENT else t for t in base.tensors)
    elif kind == "most-events":
        tensors = _events(base, MAX_EVENTS, lambda i: b"i%d" % (i % 150 + 1))
    elif kind == "most-excluded":
        tensors = base.with_tensor(Tensor("EXCLUDE", "BYTES", (B, MAX_EXCLUDE), tuple(b"z%d" % i for i in range(MAX_EXCLUDE)) * B))
    elif kind == "longest-value":
        t = base.get(draw(st.sampled_from(BYTES_INPUTS[:3] + BYTES_INPUTS[4:])))  # any item, action, device value
        tensors = base.with_tensor(_set(t, draw(st.integers(0, len(t.values) - 1)), "\u00e9".encode() * (MAX_VALUE_BYTES // 2)))
    elif kind == "any-text":  # unknown values, unicode, NUL and control characters: counted as unknown, never refused
        t = base.get(draw(st.sampled_from(("ITEMS", "ACTIONS", "DEVICE", "EXCLUDE"))))
        text = draw(st.text(max_size=30).filter(lambda s: len(s.encode()) <= MAX_VALUE_BYTES))
        tensors = base.with_tensor(_set(t, draw(st.integers(0, len(t.values) - 1)), text.encode()))
    elif kind == "edge-timestamps":
        ts = base.get("TIMESTAMPS")
        v = draw(st.one_of(st.sampled_from([MIN_TIMESTAMP, MAX_TIMESTAMP, 0, -1]), st.integers(MIN_TIMESTAMP, MAX_TIMESTAMP)))
        tensors = base.with_tensor(_set(ts, draw(st.integers(0, len(ts.values) - 1)), v))
    elif kind == "edge-k":
        tensors = base.with_tensor(Tensor("K", "INT32", (B, 1), (draw(st.sampled_from([0, 1, K])),) * B))
    else:
        raise AssertionError(kind)
    return Request(tensors, binary, expect="ok", kind=kind)


def check(req: Request, status: int, body: dict[str, Any]) -> None:
    error = str(body.get("error", ""))
    if req.expect == "ok":
        assert status == 200, f"{req.kind}: {status} {error}"
        assert all(len(items) == len(scores) for items, scores in answer_of(body))
    elif req.expect == "refused":
        assert 400 <= status < 500, f"{req.kind}: {status} {error}"
        assert re.search(req.names, error), f"{req.kind}: the error should name {req.names!r}: {error}"
    else:
        assert (400 <= status < 500 and error) or (status == 500 and re.search(UNPARSABLE, error)), f"{req.kind}: {status} {error}"


# ---- the test -------------------------------------------------------------------------------------------------------

def _metric(server: TritonServer, pattern: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return sum(float(v) for v in re.findall(pattern + r"\S*\} (\S+)$", text, flags=re.M))


def _executions(server: TritonServer) -> int:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{MODEL}/stats", timeout=10) as r:
        return int(json.loads(r.read())["model_stats"][0]["execution_count"])


@dataclass
class Tally:
    examples: int = 0
    requests: int = 0
    one_execution: int = 0  # examples whose requests that reached the model ran in one execute()
    kinds: dict[str, int] = field(default_factory=dict)


def _fuzz(server: TritonServer, pool: list[tuple[Request, list[tuple[list[str], list[float]]]]], tally: Tally) -> Callable[..., None]:
    pool_index = st.integers(0, len(pool) - 1)

    @settings(max_examples=EXAMPLES, derandomize=SEED is None, database=None, deadline=None, print_blob=True,
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))  # no shrinking: minutes per failure
    @given(data=st.data())
    def one_batch(data: st.DataObject) -> None:
        good = data.draw(st.lists(pool_index, min_size=1, max_size=3), label="good")
        odd = data.draw(st.lists(st.tuples(pool_index, st.booleans()), min_size=1, max_size=3), label="bad")
        others = [data.draw(bad_request(pool[i][0]) if bad else boundary_request(pool[i][0])) for i, bad in odd]
        batch = data.draw(st.permutations([*((pool[i][0], i) for i in good), *((r, None) for r in others)]), label="order")
        before = _executions(server)
        answers = exchange(server.http_port, [r for r, _ in batch])
        executions = _executions(server) - before
        for (req, i), (status, body) in zip(batch, answers, strict=True):
            if i is None:
                check(req, status, body)
                continue
            assert status == 200, f"a good request failed next to {[r.kind for r in others]}: {status} {body}"
            for b, (got, alone) in enumerate(zip(answer_of(body), pool[i][1], strict=True)):
                assert_same_answer(got, alone, f"good request {i} row {b} next to {[r.kind for r in others]}")
        tally.examples += 1
        tally.requests += len(batch)
        tally.one_execution += executions == 1
        for r in others:
            tally.kinds[r.kind] = tally.kinds.get(r.kind, 0) + 1

    return one_batch if SEED is None else seed(int(SEED))(one_batch)


def test_bad_requests_fail_alone_and_good_ones_in_their_batch_are_answered_as_alone(
        server: TritonServer, pool: list[tuple[Request, list[tuple[list[str], list[float]]]]]) -> None:
    failures = rf'nv_inference_request_failure\{{[^}}]*model="{MODEL}"'
    assert _metric(server, failures) == 0
    tally = Tally()
    _fuzz(server, pool, tally)()
    print(f"{tally.examples} batches of {tally.requests} requests, {tally.one_execution} batches in one execute(); drawn: {tally.kinds}")
    assert _metric(server, failures) == 0, "Triton counted failures: a request failed its batch"
    assert set(tally.kinds) == set(KINDS) | set(BOUNDARY_KINDS) or EXAMPLES < 100, f"kinds never drawn: {tally.kinds}"
    assert tally.one_execution >= tally.examples // 2, f"only {tally.one_execution} of {tally.examples} batches ran together"


@pytest.mark.parametrize("kind", ["not-utf8", "timestamp-out-of-range", "too-many-events", "value-too-long"])
def test_one_bad_request_in_a_batch_fails_alone_and_is_counted_as_refused(
        server: TritonServer, pool: list[tuple[Request, list[tuple[list[str], list[float]]]]], kind: str) -> None:
    """The finding, deterministically: a bad request between two good ones in one execute()."""
    base = pool[0][0]
    bad = {
        "not-utf8": Request(base.with_tensor(_set(base.get("ITEMS"), 0, b"\xff\xfe")), binary=True),
        "timestamp-out-of-range": Request(base.with_tensor(_set(base.get("TIMESTAMPS"), 0, 1_700_000_000_000))),
        "too-many-events": Request(_events(base, MAX_EVENTS + 1, lambda i: b"i1")),
        "value-too-long": Request(base.with_tensor(_set(base.get("ITEMS"), 0, b"a" * (MAX_VALUE_BYTES + 1))), binary=True),
    }[kind]
    refused = rf'fmrec_refused_requests_total\{{[^}}]*model="{MODEL}"'
    before = _metric(server, refused)
    for attempt in range(1, 6):  # until the three share one execute() (on a busy machine one may miss the queue delay)
        executions = _executions(server)
        (s1, b1), (s2, b2), (s3, b3) = answers = exchange(server.http_port, [pool[1][0], bad, pool[2][0]])
        assert (s1, s3) == (200, 200) and s2 == 400, answers
        assert re.match(r"^(ITEMS|TIMESTAMPS)", b2["error"]) and "Traceback" not in b2["error"], b2
        for i, body in ((1, b1), (2, b3)):
            for got, alone in zip(answer_of(body), pool[i][1], strict=True):
                assert_same_answer(got, alone, f"good request {i}")
        if _executions(server) - executions == 1:
            break
    else:
        pytest.fail("the three requests never ran in one execute()")
    assert _metric(server, refused) - before == attempt
    assert _metric(server, rf'nv_inference_request_failure\{{[^}}]*model="{MODEL}"') == 0
