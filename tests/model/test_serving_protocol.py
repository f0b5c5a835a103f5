"""Request tensors -> validated rows (fmrec.serving.protocol), and the Triton model's glue
(fmrec.serving.triton_model) against a stand-in for triton_python_backend_utils: every malformed
request is a RequestError naming the input, and in a batch it fails alone, without Triton.
The real server, fuzzed, is tests/integration/test_triton_fuzz.py."""

from __future__ import annotations

import importlib
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import Adapter
from fmrec.serving import protocol
from fmrec.serving.client import Event, request_arrays
from fmrec.serving.infer import Recommender
from fmrec.serving.metrics import ServingMetrics
from fmrec.serving.request import RequestError
from fmrec.train.pretrain import build_model
from fmrec.vocab import Vocabulary
from tests.model.triton_stub import FakeError, FakeModelException, FakeResponse, install

from .serving_cases import assert_same_answer, raw_history, with_device

T, K = 12, 10
# The documented limits (README, fmrec.serving.protocol), stated here so a change to them is a test change too.
MAX_EVENTS, MAX_EXCLUDE, MAX_REQUEST_VALUES, MAX_VALUE_BYTES = 10_000, 10_000, 50_000, 1_024
MIN_TIMESTAMP, MAX_TIMESTAMP = -62_135_596_800, 253_402_300_799  # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z
FIELDS = ("item", "action", "timeGap", "hourOfDay", "relativeTime", "device")  # TIMESTAMPS and ACTIONS required
Arrays = dict[str, npt.NDArray[Any]]


@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return leave_one_out(with_device(generate(n_events=2_000, n_users=60, n_items=120, seed=4)))


@pytest.fixture(scope="module")
def rec(split: LeaveOneOut) -> Recommender:
    torch.manual_seed(0)
    fm = build_model(split.log, d_model=16, n_layers=1, n_heads=2, context_len=T, event_fields=FIELDS).eval()
    torch.manual_seed(1)
    liked = Adapter(fm, "bottleneck", 4)
    torch.nn.init.normal_(liked.up.weight, std=0.5)
    return Recommender(fm, Vocabulary.from_log(split.log), {"liked": liked.eval()}, k_max=K)


def history(split: LeaveOneOut, user: int) -> list[Event]:
    h = raw_history(split, user)
    return [Event(str(i), int(t), str(a), {"device": str(d)})
            for i, t, a, d in zip(h["items"], h["timestamps"], h["actions"], h["device"], strict=True)]


@pytest.fixture(scope="module")
def good(split: LeaveOneOut) -> Arrays:
    """One user's request as the client builds it, with every optional input."""
    return request_arrays([history(split, int(split.test_users[0]))], task="liked", k=5, exclude=["i1", "no-such-item"])


def edit(arrays: Arrays, name: str, value: Any = None, at: tuple[int, ...] | None = None) -> Arrays:
    """A copy with input `name` replaced (value an array), one element set (at), or removed (value None)."""
    out = {n: a.copy() for n, a in arrays.items()}
    if at is not None:
        out[name][at] = value
    elif value is None:
        del out[name]
    else:
        out[name] = value
    return out


def events(n: int, users: int = 1) -> Arrays:
    """A request for `users` users with n events each."""
    items = np.array([f"i{i % 100 + 1}".encode() for i in range(n)], dtype=object)
    return {"ITEMS": np.tile(items, (users, 1)), "TIMESTAMPS": np.tile(10 ** 9 + np.arange(n, dtype=np.int64), (users, 1)),
            "ACTIONS": np.full((users, n), b"4", dtype=object), "DEVICE": np.full((users, n), b"tv", dtype=object)}


BAD: list[tuple[str, Callable[[Arrays], Arrays], str, str]] = [
    # id, the change, the input named, the message
    ("items-missing", lambda a: edit(a, "ITEMS"), "ITEMS", r"^ITEMS is required"),
    ("items-1d", lambda a: edit(a, "ITEMS", a["ITEMS"][0]), "ITEMS", r"^ITEMS must have shape \[users, events\], got \[\d+\]"),
    ("no-users", lambda a: {n: x[:0] for n, x in a.items()}, "ITEMS", r"^ITEMS has no rows"),
    ("items-not-utf8", lambda a: edit(a, "ITEMS", b"i\xff", at=(0, 1)), "ITEMS", r"^ITEMS\[0, 1\] is not UTF-8 \(invalid start byte"),
    ("items-surrogate", lambda a: edit(a, "ITEMS", b"\xed\xa0\x80", at=(0, 0)), "ITEMS", r"^ITEMS\[0, 0\] is not UTF-8"),
    ("items-truncated", lambda a: edit(a, "ITEMS", b"caf\xc3", at=(0, 0)), "ITEMS", r"^ITEMS\[0, 0\] is not UTF-8 \(unexpected end"),
    ("items-str-surrogate", lambda a: edit(a, "ITEMS", "\ud800", at=(0, 0)), "ITEMS", r"^ITEMS\[0, 0\] is not UTF-8"),
    ("items-not-bytes", lambda a: edit(a, "ITEMS", 7, at=(0, 0)), "ITEMS", r"^ITEMS\[0, 0\] is not BYTES but int"),
    ("items-value-too-long", lambda a: edit(a, "ITEMS", b"x" * 1025, at=(0, 2)), "ITEMS", r"^ITEMS\[0, 2\] has 1025 bytes; .* 1024"),
    ("items-too-many", lambda a: events(10_001), "ITEMS", r"^ITEMS has 10001 events per user; at most 10000 .* send the newest"),
    ("actions-not-utf8", lambda a: edit(a, "ACTIONS", b"\x80", at=(0, 0)), "ACTIONS", r"^ACTIONS\[0, 0\] is not UTF-8"),
    ("device-not-utf8", lambda a: edit(a, "DEVICE", b"\xfe", at=(0, 3)), "DEVICE", r"^DEVICE\[0, 3\] is not UTF-8"),
    ("task-not-utf8", lambda a: edit(a, "TASK", b"lik\xe9d", at=(0, 0)), "TASK", r"^TASK\[0, 0\] is not UTF-8"),
    ("exclude-not-utf8", lambda a: edit(a, "EXCLUDE", b"\xc0\xaf", at=(0, 1)), "EXCLUDE", r"^EXCLUDE\[0, 1\] is not UTF-8"),
    ("items-too-many-in-request", lambda a: events(8_334, users=6), "ITEMS",
     r"^ITEMS has 6 users x 8334 events = 50004 values; at most 50000 .* send the users in several requests"),
    ("exclude-too-many", lambda a: edit(a, "EXCLUDE", np.full((1, 10_001), b"i1", dtype=object)), "EXCLUDE",
     r"^EXCLUDE has 10001 item IDs per user; at most 10000"),
    ("exclude-too-many-in-request", lambda a: events(3, users=6) | {"EXCLUDE": np.full((6, 8_334), b"i1", dtype=object)}, "EXCLUDE",
     r"^EXCLUDE has 6 users x 8334 item IDs = 50004 values; at most 50000"),
    ("exclude-other-rows", lambda a: edit(a, "EXCLUDE", np.full((2, 1), b"i1", dtype=object)), "EXCLUDE",
     r"^EXCLUDE has shape \[2, 1\]; send \[1, n\]"),
    ("actions-misaligned", lambda a: edit(a, "ACTIONS", a["ACTIONS"][:, :1]), "ACTIONS", r"^ACTIONS has shape \[1, 1\]; send \[1, \d+\] like"),
    ("task-two-values", lambda a: edit(a, "TASK", np.array([[b"fm", b"liked"]], dtype=object)), "TASK", r"^TASK has shape \[1, 2\]"),
    ("timestamps-missing", lambda a: edit(a, "TIMESTAMPS"), "TIMESTAMPS", r"^TIMESTAMPS is required: this model was trained with"),
    ("actions-missing", lambda a: edit(a, "ACTIONS"), "ACTIONS", r"^ACTIONS is required"),
    ("timestamps-float", lambda a: edit(a, "TIMESTAMPS", a["TIMESTAMPS"].astype(np.float64)), "TIMESTAMPS",
     r"^TIMESTAMPS has datatype float64; send INT64"),
    ("timestamps-milliseconds", lambda a: edit(a, "TIMESTAMPS", 1_700_000_000_000, at=(0, 0)), "TIMESTAMPS",
     r"^TIMESTAMPS has 1700000000000 at event 0: .* \(milliseconds\? send seconds\)"),
    ("timestamps-int64-max", lambda a: edit(a, "TIMESTAMPS", 2 ** 63 - 1, at=(0, 1)), "TIMESTAMPS", r"^TIMESTAMPS has 9223372036854775807"),
    ("timestamps-int64-min", lambda a: edit(a, "TIMESTAMPS", -2 ** 63, at=(0, 1)), "TIMESTAMPS", r"^TIMESTAMPS has -9223372036854775808 at"),
    ("timestamps-before-year-1", lambda a: edit(a, "TIMESTAMPS", MIN_TIMESTAMP - 1, at=(0, 0)), "TIMESTAMPS", r"the years 1 to 9999\)$"),
    ("k-negative", lambda a: edit(a, "K", np.array([[-1]], dtype=np.int32)), "K", r"^K=-1 is outside 1..10"),
    ("k-too-large", lambda a: edit(a, "K", np.array([[2 ** 31 - 1]], dtype=np.int32)), "K", r"^K=2147483647 is outside 1..10"),
    ("k-float", lambda a: edit(a, "K", np.array([[2.0]])), "K", r"^K has datatype float64; send INT32"),
    ("unknown-task", lambda a: edit(a, "TASK", np.array([["caf\u00e9".encode()]], dtype=object)), "TASK",
     r"^unknown TASK 'café': this model serves \['fm', 'liked'\]"),
]


def test_the_documented_limits() -> None:
    from fmrec.serving.request import MAX_TIMESTAMP as max_ts, MIN_TIMESTAMP as min_ts

    assert (protocol.MAX_EVENTS, protocol.MAX_EXCLUDE, protocol.MAX_REQUEST_VALUES, protocol.MAX_VALUE_BYTES) == (
        MAX_EVENTS, MAX_EXCLUDE, MAX_REQUEST_VALUES, MAX_VALUE_BYTES)
    assert (min_ts, max_ts) == (MIN_TIMESTAMP, MAX_TIMESTAMP)
    assert MIN_TIMESTAMP - MAX_TIMESTAMP > -2 ** 63, "differences of accepted timestamps must not overflow int64"


@pytest.mark.parametrize(("change", "tensor", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_malformed_request_is_refused_naming_the_input(rec: Recommender, good: Arrays, change: Callable[[Arrays], Arrays],
                                                          tensor: str, message: str) -> None:
    assert protocol.prepare(rec, good.get)  # the request before the change is answered
    with pytest.raises(RequestError, match=message) as err:
        protocol.prepare(rec, change(good).get)
    assert err.value.tensor == tensor


def test_the_row_at_fault_is_named_in_a_request_for_several_users(rec: Recommender, split: LeaveOneOut) -> None:
    arrays = request_arrays([history(split, int(u)) for u in split.test_users[:3]])
    arrays["TIMESTAMPS"][2, 0] = MAX_TIMESTAMP + 1
    with pytest.raises(RequestError, match=r"^user row 2: TIMESTAMPS has 253402300800 at event 0"):
        protocol.prepare(rec, arrays.get)
    arrays["ITEMS"][1, 1:] = b""  # a shorter row, padded: the values in its padding are not used (but must be UTF-8)
    arrays["TIMESTAMPS"][1, 1:] = -2 ** 63
    arrays["ACTIONS"][1, 1:] = b"not-an-action"
    arrays["TIMESTAMPS"][2, 0] = MAX_TIMESTAMP
    assert [len(p.encoded.tokens["item"]) for p in protocol.prepare(rec, arrays.get)] == [T] * 3


GOOD: list[tuple[str, Callable[[Arrays], Arrays]]] = [
    ("empty-history", lambda a: {n: x[:, :0] if n in ("ITEMS", "TIMESTAMPS", "ACTIONS", "DEVICE") else x for n, x in a.items()}),
    ("most-events", lambda a: events(10_000)),
    ("most-values-in-request", lambda a: events(10_000, users=5) | {"EXCLUDE": np.full((5, 10_000), b"i1", dtype=object)}),
    ("most-excluded", lambda a: edit(a, "EXCLUDE", np.full((1, 10_000), b"i1", dtype=object))),
    ("longest-value", lambda a: edit(a, "ITEMS", "\u00e9".encode() * 512, at=(0, 0))),
    ("unknown-and-odd-values", lambda a: edit(edit(a, "ITEMS", "\x00\u2603\U0001f600".encode(), at=(0, 0)), "DEVICE", b"", at=(0, 1))),
    ("first-and-last-seconds", lambda a: edit(edit(a, "TIMESTAMPS", MIN_TIMESTAMP, at=(0, 0)), "TIMESTAMPS", MAX_TIMESTAMP, at=(0, 1))),
    ("k-0-is-the-most", lambda a: edit(a, "K", np.array([[0]], dtype=np.int32))),
    ("k-1", lambda a: edit(a, "K", np.array([[1]], dtype=np.int32))),
    ("str-values", lambda a: {n: np.vectorize(bytes.decode, otypes=[object])(x) if x.dtype == object else x for n, x in a.items()}),
]


@pytest.mark.parametrize("change", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_a_request_at_the_limits_is_answered(rec: Recommender, good: Arrays, change: Callable[[Arrays], Arrays]) -> None:
    rows = protocol.prepare(rec, change(good).get)
    assert rows and all(len(r.items) == rows[0].k and np.isfinite(r.scores).all() for r in rec.run(rows))


# ---- the Triton model's glue, against a stand-in for triton_python_backend_utils ------------------------------------

@pytest.fixture
def pb(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    yield install(monkeypatch, "fmrec.serving.triton_model")


def served(pb: types.ModuleType, rec: Recommender) -> Any:
    """The Triton model as initialize() leaves it, on this Recommender."""
    module = importlib.import_module("fmrec.serving.triton_model")
    model = module.TritonPythonModel()
    model.rec, model.faults = rec, module.Faults(0.0, 0.0)
    model.metrics = ServingMetrics(pb, "fmrec", "1", {t: (0.0, 1.0) for t in rec.tasks}, np.zeros(len(rec.vocab.items) + 1, np.int64))
    return model


def answer(response: FakeResponse) -> list[tuple[list[str], list[float]]]:
    items, scores = response.outputs["TOPK_ITEMS"], response.outputs["TOPK_SCORES"]
    return [([i.decode() for i in items[b]], scores[b].tolist()) for b in range(len(items))]


@pytest.mark.parametrize("bad", ["items-not-utf8", "task-not-utf8", "timestamps-milliseconds", "items-too-many", "k-too-large",
                                 "items-value-too-long", "no-users", "unknown-task"])
def test_a_bad_request_in_a_batch_fails_alone(pb: types.ModuleType, rec: Recommender, split: LeaveOneOut, good: Arrays,
                                             bad: str) -> None:
    """One execute() with the bad request between two good ones: it gets a 400 naming the input,
    the others exactly their answers alone, and nothing is raised (Triton would fail the batch)."""
    model = served(pb, rec)
    other = request_arrays([history(split, int(u)) for u in split.test_users[1:3]], k=K)
    change, tensor, message = next(b[1:] for b in BAD if b[0] == bad)
    responses = model.execute([good, change(good), other])
    assert [r.error is None for r in responses] == [True, False, True]
    assert responses[1].error.code == FakeError.INVALID_ARG and re.search(message, responses[1].error.text)
    for got, request in ((responses[0], good), (responses[2], other)):
        alone = model.execute([request])[0]
        for b, (row, want) in enumerate(zip(answer(got), answer(alone), strict=True)):
            assert_same_answer(row, want, f"row {b}")
    refused = {m.labels["input"]: m.value for m in model.metrics._families["fmrec_refused_requests_total"].metrics}
    assert refused[tensor] == 1 and sum(refused.values()) == 1


def test_a_bug_fails_the_batch_visibly_without_a_traceback_to_clients(pb: types.ModuleType, rec: Recommender, good: Arrays,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a request's fault: raised, so Triton counts the batch as failed (a broken canary must fail
    its analysis); the client reads the exception's type, the server's log has the traceback."""
    model = served(pb, rec)

    def broken(rows: object) -> None:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(model.rec, "run", broken)
    with pytest.raises(FakeModelException, match=r"^internal error in the fmrec model \(ZeroDivisionError\); the server's log") as err:
        model.execute([good, good])
    assert "secret internals" not in str(err.value)
    assert "secret internals" in pb.logged[0] and "Traceback" in pb.logged[0]
