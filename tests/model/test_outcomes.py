"""Sticky user buckets (fmrec.serving.client) and the outcome model's contract (fmrec.serving.protocol
outcomes, fmrec.serving.outcome_model against a stand-in for triton_python_backend_utils, and its
export); the bucket header as a request parameter, counted as an experiment exposure or outcome
(fmrec.serving.protocol "Experiments"), and the Triton flags that forward it. The real server:
tests/integration/test_triton_outcomes.py."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
import yaml
from scipy.stats import chisquare

from fmdev.local import kserve
from fmrec import checkpoint
from fmrec.data.split import leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import Adapter
from fmrec.serving import client, protocol
from fmrec.serving.client import BUCKET_HEADER, bucket, bucket_headers, outcome_arrays
from fmrec.serving.export import export_triton
from fmrec.serving.infer import Recommendation
from fmrec.serving.metrics import OutcomeMetrics, ServingMetrics
from fmrec.serving.request import RequestError
from fmrec.train.pretrain import build_model
from fmrec.vocab import Vocabulary
from tests.model.triton_stub import FakeError, FakeFamily, FakeMetric, FakeModelException, install

K = 10
TASKS = ("fm", "liked")
OUTCOMES = ("clicked", "played", "added", "skipped", "ignored")  # the documented set, stated here so a change is a test change
BASH = 'h=$(printf %s "$USER_ID" | sha256sum | cut -c1-15); echo $(( 16#$h % 100 ))'  # the documented one-liner
Arrays = dict[str, npt.NDArray[Any]]

# ---- buckets ---------------------------------------------------------------------------------------------------------

PINNED = {"u42": 63, "alice": 62, "": 53, "José": 31, "用户-7": 4, "🙂": 83, "user-0": 35, "user-99999": 43}


def test_bucket_values_are_pinned() -> None:
    """The bucket of a key never changes: a change here moves users between revisions mid-experiment."""
    assert {k: bucket(k) for k in PINNED} == PINNED
    assert BUCKET_HEADER == "x-fmops-bucket"
    assert bucket_headers("u42") == {"x-fmops-bucket": "63"} and bucket_headers(None) is None


def test_bucket_agrees_with_the_documented_bash_line() -> None:
    """The exact line of the docs, run by bash, for ASCII, accented, CJK, emoji, shell-special and spaced keys."""
    assert BASH in (client.__doc__ or "") and BASH in (bucket.__doc__ or "")
    keys = ["u42", "alice", "", "José", "用户-7", "🙂", "a b  c", "%s%d\\n", "$(echo x)", "tab\there", "Ünïcödé-ß-ø", "42"]
    for key in keys:
        out = subprocess.run(["bash", "-c", BASH], env={**os.environ, "USER_ID": key}, capture_output=True, text=True, check=True)
        assert int(out.stdout) == bucket(key), key


def test_buckets_are_uniform_over_100k_keys() -> None:
    counts = np.bincount([bucket(f"user-{i}") for i in range(100_000)], minlength=100)
    assert len(counts) == 100 and counts.min() > 0
    assert chisquare(counts).pvalue > 0.001, counts
    uuids = np.bincount([bucket(f"{i:032x}") for i in range(0, 100_000 * 7919, 7919)], minlength=100)
    assert chisquare(uuids).pvalue > 0.001, uuids


# ---- outcome requests --------------------------------------------------------------------------------------------------

def request(outcomes: list[bytes] | None = None, position: list[int] | None = None, task: list[bytes] | None = None) -> Arrays:
    out: Arrays = {}
    if outcomes is not None:
        out["OUTCOME"] = np.array([[o] for o in outcomes], dtype=np.object_)
    if position is not None:
        out["POSITION"] = np.array([[p] for p in position], dtype=np.int32)
    if task is not None:
        out["TASK"] = np.array([[t] for t in task], dtype=np.object_)
    return out


def parse(arrays: Arrays) -> list[protocol.Outcome]:
    return protocol.outcomes(arrays.get, TASKS, K)


def test_the_documented_outcomes_and_inputs() -> None:
    assert protocol.OUTCOMES == OUTCOMES
    assert [(s.name, s.datatype, s.dims, s.optional) for s in protocol.OUTCOME_INPUTS] == [
        ("OUTCOME", "BYTES", (1,), False), ("POSITION", "INT32", (1,), True), ("TASK", "BYTES", (1,), True)]
    assert protocol.outcome_model("fmrec") == "fmrec_outcome"
    for o in OUTCOMES:
        assert re.search(rf"^\s+{o}\s", protocol.__doc__ or "", re.M), f"{o} should be documented"


def test_outcome_rows_are_parsed_with_the_defaults_of_the_recommend_model() -> None:
    assert parse(request([b"played"])) == [protocol.Outcome("played", "fm", None)]
    assert parse(request([b"clicked", b"ignored"], [1, K], [b"liked", b""])) == [
        protocol.Outcome("clicked", "liked", 1), protocol.Outcome("ignored", "fm", K)]
    assert parse(request([b"skipped"], task=[b"fm"])) == [protocol.Outcome("skipped", "fm", None)]
    assert [o.outcome for o in parse(request([o.encode() for o in OUTCOMES]))] == list(OUTCOMES)


BAD: list[tuple[str, Callable[[], Arrays], str, str]] = [  # id, request, input at fault, message
    ("missing", lambda: request(None, [1]), "OUTCOME", r"^OUTCOME is required: what the user did, one of \['clicked', 'played'"),
    ("unknown", lambda: request([b"bought"]), "OUTCOME",
     r"^OUTCOME 'bought' is not an outcome this model counts: send one of \['clicked', 'played', 'added', 'skipped', 'ignored'\]$"),
    ("case", lambda: request([b"Played"]), "OUTCOME", r"^OUTCOME 'Played' is not an outcome"),
    ("empty", lambda: request([b""]), "OUTCOME", r"^OUTCOME '' is not an outcome"),
    ("not-utf8", lambda: request([b"pl\xffayed"]), "OUTCOME", r"^OUTCOME\[0, 0\] is not UTF-8"),
    ("too-long", lambda: request([b"p" * 1025]), "OUTCOME", r"^OUTCOME\[0, 0\] has 1025 bytes"),
    ("no-rows", lambda: {"OUTCOME": np.empty((0, 1), np.object_)}, "OUTCOME", r"^OUTCOME has no rows"),
    ("wide", lambda: {"OUTCOME": np.array([[b"played", b"played"]], np.object_)}, "OUTCOME", r"^OUTCOME must have shape \[rows, 1\]"),
    ("position-0", lambda: request([b"played"], [0]), "POSITION", rf"^POSITION=0 is outside 1\.\.{K}"),
    ("position-k+1", lambda: request([b"played"], [K + 1]), "POSITION", rf"^POSITION={K + 1} is outside 1\.\.{K}"),
    ("position-negative", lambda: request([b"played"], [-2 ** 31]), "POSITION", r"^POSITION=-2147483648 is outside"),
    ("position-float", lambda: {**request([b"played"]), "POSITION": np.array([[1.5]], np.float32)}, "POSITION",
     r"^POSITION has datatype float32; send INT32"),
    ("position-misaligned", lambda: {**request([b"played", b"added"]), "POSITION": np.array([[1]], np.int32)}, "POSITION",
     r"^POSITION has shape \[1, 1\]; send \[2, 1\] like OUTCOME"),
    ("unknown-task", lambda: request([b"played"], task=[b"nope"]), "TASK", r"^unknown TASK 'nope': this model serves \['fm', 'liked'\]$"),
    ("task-not-utf8", lambda: request([b"played"], task=[b"\xc3"]), "TASK", r"^TASK\[0, 0\] is not UTF-8"),
    ("second-row", lambda: request([b"played", b"bought", b"added"]), "OUTCOME", r"^row 1: OUTCOME 'bought'"),
    ("second-row-position", lambda: request([b"played", b"added"], [3, 99]), "POSITION", r"^row 1: POSITION=99"),
]


@pytest.mark.parametrize(("make", "tensor", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_malformed_outcome_is_refused_naming_the_input(make: Callable[[], Arrays], tensor: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as err:
        parse(make())
    assert err.value.tensor == tensor


def test_the_client_builds_the_outcome_request() -> None:
    arrays = outcome_arrays(["played"], position=3, task="liked")
    assert {n: (a.dtype, a.shape) for n, a in arrays.items()} == {
        "OUTCOME": (np.dtype(object), (1, 1)), "POSITION": (np.dtype(np.int32), (1, 1)), "TASK": (np.dtype(object), (1, 1))}
    assert parse(arrays) == [protocol.Outcome("played", "liked", 3)]
    assert set(outcome_arrays(["skipped"])) == {"OUTCOME"}


def test_recommend_many_wants_one_user_per_history() -> None:
    with pytest.raises(ValueError, match=r"^1 users for 2 histories: give one user per history$"):
        client.RecommenderClient("127.0.0.1:1").recommend_many([[], []], users=["u42"])  # refused before anything is sent


# ---- the outcome model's glue, against a stand-in for triton_python_backend_utils --------------------------------------

@pytest.fixture
def pb(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    yield install(monkeypatch, "fmrec.serving.outcome_model")


def model_config() -> str:
    params = {"recommender": "fmrec", "recommender_version": "1", "tasks": ",".join(TASKS), "top_k": str(K)}
    return json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}})


def served(pb: types.ModuleType) -> Any:
    module = importlib.import_module("fmrec.serving.outcome_model")
    model = module.TritonPythonModel()
    model.initialize({"model_config": model_config(), "model_name": "fmrec_outcome", "model_version": "1",
                      "model_repository": "/nowhere"})
    return model


def series(model: Any, family: str) -> dict[frozenset[tuple[str, str]], FakeMetric]:
    return {frozenset(m.labels.items()): m for m in model.metrics._families[family].metrics}


def test_every_series_exists_from_start_up_labelled_with_the_recommend_model(pb: types.ModuleType) -> None:
    model = served(pb)
    counts = series(model, "fmrec_outcomes_total")
    assert set(counts) == {frozenset({"model": "fmrec", "version": "1", "task": t, "outcome": o}.items()) for t in TASKS for o in OUTCOMES}
    assert all(m.value == 0 for m in counts.values())
    positions = series(model, "fmrec_outcome_position")
    assert set(positions) == set(counts) and all(m.buckets == [1.0, 2.0, 3.0, 5.0, 10.0] for m in positions.values())
    refused = series(model, "fmrec_refused_requests_total")
    assert {dict(ls)["input"] for ls in refused} == {"OUTCOME", "POSITION", "TASK", "request"}
    assert {dict(ls)["model"] for ls in refused} == {"fmrec_outcome"}


def total(model: Any, **labels: str) -> float:
    return sum(m.value for ls, m in series(model, "fmrec_outcomes_total").items() if labels.items() <= dict(ls).items())


@pytest.mark.parametrize("bad", [b[0] for b in BAD])
def test_a_bad_request_in_a_batch_fails_alone_and_counts_nothing(pb: types.ModuleType, bad: str) -> None:
    model = served(pb)
    make, tensor, message = next(b[1:] for b in BAD if b[0] == bad)
    good = [request([b"played"], [1]), request([b"played", b"clicked"], [2, 7], [b"liked", b"liked"]), request([b"skipped"])]
    responses = model.execute([good[0], make(), good[1], good[2]])
    assert [r.error is None for r in responses] == [True, False, True, True]
    assert responses[1].error.code == FakeError.INVALID_ARG and re.search(message, responses[1].error.text)
    assert [r.outputs["ACK"].tolist() for r in responses if r.error is None] == [[[1]], [[1], [1]], [[1]]]
    assert total(model) == 4 and total(model, outcome="played") == 2 and total(model, outcome="played", task="liked") == 1
    assert total(model, outcome="clicked", task="liked") == 1 and total(model, outcome="skipped", task="fm") == 1
    assert {dict(ls)["outcome"] for ls, m in series(model, "fmrec_outcomes_total").items() if m.value} == {"played", "clicked", "skipped"}
    assert len(series(model, "fmrec_outcomes_total")) == len(TASKS) * len(OUTCOMES), "no request may add a series"
    observed = {(dict(ls)["task"], dict(ls)["outcome"]): m.observed for ls, m in series(model, "fmrec_outcome_position").items() if m.observed}
    assert observed == {("fm", "played"): [1.0], ("liked", "played"): [2.0], ("liked", "clicked"): [7.0]}
    refused = {dict(ls)["input"]: m.value for ls, m in series(model, "fmrec_refused_requests_total").items()}
    assert refused[tensor] == 1 and sum(refused.values()) == 1


def test_a_bug_fails_the_batch_visibly(pb: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    model = served(pb)

    def broken(*args: object) -> None:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(model.metrics, "record", broken)
    with pytest.raises(FakeModelException, match=r"^internal error in the fmrec outcome model \(ZeroDivisionError\)") as err:
        model.execute([request([b"played"])])
    assert "secret internals" not in str(err.value) and "secret internals" in pb.logged[0]


def test_outcome_metrics_count_once_per_task_and_outcome(pb: types.ModuleType) -> None:
    m = OutcomeMetrics(pb, "recs_outcome", "1", "recs", "1", ("fm",))
    calls = []
    for metric in m.counts.values():
        metric.increment = lambda v, metric=metric: calls.append((metric.labels["outcome"], v))
    m.record([protocol.Outcome("played", "fm", None)] * 5 + [protocol.Outcome("added", "fm", 2)])
    assert sorted(calls) == [("added", 1.0), ("played", 5.0)]


# ---- experiments: the bucket header as a request parameter --------------------------------------------------------------

def params(*members: tuple[str, object]) -> str:
    """Request parameters as Triton passes them: a JSON object, duplicate keys kept (forwarded headers come last)."""
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"


H = "x-fmops-bucket"
BUCKET_PARAMETERS: list[tuple[str, str | None, int | None]] = [  # id, parameters, bucket
    ("none", None, None),
    ("empty-string", "", None),
    ("no-header", "{}", None),
    ("other-parameters-only", params(("binary_data_size", 12), ("priority", 1)), None),
    ("bucket", params((H, "42")), 42),
    ("bucket-0", params((H, "0")), 0),
    ("bucket-99", params((H, "99")), 99),
    ("beside-other-parameters", params(("binary_data_size", 12), (H, "7")), 7),
    ("header-case-kept-by-triton", params(("X-FMOPS-BUCKET", "7")), 7),
    ("mixed-case", params(("X-Fmops-Bucket", "63")), 63),
    ("trailing-space-kept-by-triton", params((H, "12 ")), 12),
    ("tabs", params((H, "\t5\t")), 5),
    ("same-value-twice", params((H, "3"), (H, "3")), 3),
    ("100", params((H, "100")), None),
    ("negative", params((H, "-1")), None),
    ("leading-zero", params((H, "07")), None),
    ("plus-sign", params((H, "+5")), None),
    ("blank-as-triton-passes-it", params((H, " ")), None),
    ("empty", params((H, "")), None),
    ("word", params((H, "abc")), None),
    ("hex", params((H, "0x1")), None),
    ("exponent", params((H, "1e1")), None),
    ("decimal-point", params((H, "5.0")), None),
    ("newline", params((H, "5\n")), None),
    ("arabic-indic-digit", params((H, "\u0663")), None),
    ("fullwidth-digit", params((H, "\uff15")), None),
    ("huge", params((H, "9" * 5000)), None),
    ("two-values", params((H, "1"), (H, "2")), None),
    ("body-int-and-header", params((H, 3), (H, "4")), None),
    ("int-not-text", params((H, 5)), None),
    ("null", params((H, None)), None),
    ("list", params((H, ["5"])), None),
    ("longer-name", params(("x-fmops-bucket-other", "1")), None),
    ("nested", params(("outer", {H: "5"})), None),
    ("not-json", "x-fmops-bucket: 5", None),
    ("json-array", json.dumps([[H, "5"]]), None),
    ("json-string", json.dumps("5"), None),
]


@pytest.mark.parametrize(("parameters", "want"), [b[1:] for b in BUCKET_PARAMETERS], ids=[b[0] for b in BUCKET_PARAMETERS])
def test_the_experiment_bucket_is_read_from_the_request_parameters(parameters: str | None, want: int | None) -> None:
    """Only a bucket as the client writes it (0..99, decimal, no leading zero) counts; anything else,
    malformed or ambiguous, is no bucket (and never an error: experiment_bucket does not raise)."""
    for spec in (parameters, *([parameters.replace('"' + H + '"', '"' + H.upper() + '"')] if parameters else [])):
        assert protocol.experiment_bucket(spec) == want, spec


def test_every_client_bucket_reads_back() -> None:
    for b in range(protocol.BUCKETS):
        headers = bucket_headers(next(u for u in (f"user-{i}" for i in range(10_000)) if bucket(u) == b))
        assert headers is not None
        assert protocol.experiment_bucket(json.dumps(headers)) == b


class FakeRequest(dict[str, npt.NDArray[Any]]):
    """A request's input arrays and its parameters() as the python backend gives them (a JSON string),
    or the UnicodeDecodeError it raises for a forwarded header value that is not UTF-8."""

    def __init__(self, arrays: Arrays, parameters: str | Exception = "{}") -> None:
        super().__init__(arrays)
        self.params = parameters

    def parameters(self) -> str:
        if isinstance(self.params, Exception):
            raise self.params
        return self.params


def test_request_parameters_are_read_without_raising() -> None:
    assert protocol.request_parameters(FakeRequest({}, params((H, "5")))) == '{"x-fmops-bucket":"5"}'
    bad = UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")
    assert protocol.request_parameters(FakeRequest({}, bad)) is None
    assert protocol.request_parameters({}) is None  # a backend without parameters() forwards no header


def test_triton_is_told_to_forward_exactly_the_bucket_header() -> None:
    assert protocol.BUCKET_HEADER == BUCKET_HEADER == "x-fmops-bucket" and client.BUCKETS == protocol.BUCKETS == 100
    assert protocol.FORWARD_ARGS == ("--http-header-forward-pattern=^x-fmops-bucket$", "--grpc-header-forward-pattern=^x-fmops-bucket$")
    pattern = re.compile(protocol.FORWARD_PATTERN, re.I)  # Triton matches header names without case, as HTTP does
    assert [bool(pattern.search(h)) for h in ("x-fmops-bucket", "X-Fmops-Bucket", "x-fmops-bucket-2", "a-x-fmops-bucket")] == [
        True, True, False, False]
    for doc in (client.__doc__ or "", protocol.__doc__ or ""):
        for arg in protocol.FORWARD_ARGS:
            assert arg.split("=")[0] in doc and protocol.FORWARD_PATTERN in doc


KSERVE_RUNTIME = """apiVersion: serving.kserve.io/v1alpha1
kind: ClusterServingRuntime
metadata: {name: kserve-tritonserver}
spec:
  containers:
    - name: kserve-container
      image: kserve-tritonserver:replace
      args: [tritonserver, --model-store=/mnt/models, --grpc-port=9000, --http-port=8080, --allow-grpc=true, --allow-http=true]
"""


def test_the_local_serving_runtime_forwards_the_bucket_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KServe's own runtime (its args as in config/runtimes/kserve-tritonserver.yaml) plus the forwarding flags."""
    (tmp_path / "kserve-tritonserver.yaml").write_text(KSERVE_RUNTIME)
    monkeypatch.setattr(kserve, "_config_file", lambda name: tmp_path / name)
    container = kserve.serving_runtime("localhost/fmop/fmrec:x")["spec"]["containers"][0]
    args = container["args"]
    assert args[:6] == yaml.safe_load(KSERVE_RUNTIME)["spec"]["containers"][0]["args"]
    for arg in protocol.FORWARD_ARGS:
        assert args.count(arg) == 1, args
    assert container["image"] == "localhost/fmop/fmrec:x"


def experiment_total(model: Any, **labels: str) -> float:
    return sum(m.value for ls, m in series(model, "fmrec_experiment_outcomes_total").items() if labels.items() <= dict(ls).items())


def test_experiment_series_exist_from_start_up_labelled_like_the_outcomes(pb: types.ModuleType) -> None:
    model = served(pb)
    experiment = series(model, "fmrec_experiment_outcomes_total")
    assert set(experiment) == set(series(model, "fmrec_outcomes_total")) and all(m.value == 0 for m in experiment.values())


def test_only_reports_with_a_bucket_count_as_experiment_outcomes(pb: types.ModuleType) -> None:
    """In one batch: reports with a bucket (any case of the name), without one, with a malformed one,
    with a header that is not UTF-8, and a refused one with a bucket. All good ones are answered and
    counted in fmrec_outcomes_total; only those with a bucket in fmrec_experiment_outcomes_total."""
    model = served(pb)
    bad_utf8 = UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")
    batch = [
        FakeRequest(request([b"played", b"played", b"clicked"], [1, 2, 3]), params((H, "42"))),
        FakeRequest(request([b"skipped"], task=[b"liked"]), params(("X-Fmops-Bucket", "0"))),
        FakeRequest(request([b"played"])),  # no experiment
        FakeRequest(request([b"played"]), params((H, "100"))),  # malformed: no exposure, no error
        FakeRequest(request([b"added"]), params((H, "1"), (H, "2"))),  # ambiguous
        FakeRequest(request([b"added"]), bad_utf8),
        FakeRequest(request([b"bought"]), params((H, "5"))),  # refused: counts nowhere
    ]
    responses = model.execute(batch)
    assert [r.error is None for r in responses] == [True] * 6 + [False]
    assert [r.outputs["ACK"].tolist() for r in responses[:6]] == [[[1], [1], [1]], [[1]], [[1]], [[1]], [[1]], [[1]]]
    assert total(model) == 8 and total(model, outcome="played") == 4
    assert experiment_total(model) == 4
    assert experiment_total(model, task="fm", outcome="played") == 2 and experiment_total(model, task="fm", outcome="clicked") == 1
    assert experiment_total(model, task="liked", outcome="skipped") == 1 and experiment_total(model, outcome="added") == 0
    assert {dict(ls)["model"] for ls in series(model, "fmrec_experiment_outcomes_total")} == {"fmrec"}
    assert len(series(model, "fmrec_experiment_outcomes_total")) == len(TASKS) * len(OUTCOMES), "no request may add a series"
    refused = {dict(ls)["input"]: m.value for ls, m in series(model, "fmrec_refused_requests_total").items()}
    assert refused["OUTCOME"] == 1 and sum(refused.values()) == 1, "a malformed bucket is no refusal"


def answered_row(task: str, items: int, k: int = 3) -> Recommendation:
    scores = np.full(k, -np.inf, np.float32)
    scores[:items] = np.arange(items, 0, -1)
    return Recommendation(items=np.array([f"i{j}" if j < items else "" for j in range(k)], dtype=object),
                          codes=np.array([j + 1 if j < items else 0 for j in range(k)], np.int64), scores=scores,
                          user=np.zeros(2, np.float32), task=task, events=1, unknown={})


def test_exposures_are_the_answered_rows_of_requests_with_a_bucket() -> None:
    """The rows fmrec_top_score counts (at least one item), and of those only the experiment's."""
    made: list[tuple[str, FakeMetric]] = []

    class Family(FakeFamily):
        def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> FakeMetric:  # noqa: N802 - Triton's name
            made.append((self.name, super().Metric(labels, buckets)))
            return made[-1][1]

    m = ServingMetrics(types.SimpleNamespace(MetricFamily=Family), "fmrec", "1", {t: (0.0, 1.0) for t in TASKS}, np.zeros(10, np.int64))
    exposures = {m.labels["task"]: m for n, m in made if n == "fmrec_experiment_requests_total"}
    assert set(exposures) == set(TASKS) and all(m.labels == {"model": "fmrec", "version": "1", "task": t} and m.value == 0
                                                 for t, m in exposures.items())
    rows = [answered_row("fm", 3), answered_row("fm", 0), answered_row("liked", 1), answered_row("fm", 2), answered_row("liked", 3)]
    m.record(rows, [True, True, True, False, False])
    assert {t: e.value for t, e in exposures.items()} == {"fm": 1, "liked": 1}
    assert sum(len(mt.observed) for n, mt in made if n == "fmrec_top_score") == 4
    m.record(rows)  # no request carried a bucket
    assert {t: e.value for t, e in exposures.items()} == {"fm": 1, "liked": 1}
    with pytest.raises(ValueError, match="2 experiment flags for 5 results"):
        m.record(rows, [True, False])


def test_the_outcome_model_imports_no_torch() -> None:
    """It loads no weights: its stub process stays small (the recommend model's imports torch)."""
    code = ("import sys, types; sys.modules['triton_python_backend_utils'] = types.ModuleType('triton_python_backend_utils'); "
            "import fmrec.serving.outcome_model; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- export ------------------------------------------------------------------------------------------------------------

def test_export_writes_the_outcome_model_beside_the_recommend_model(tmp_path: Path) -> None:
    split = leave_one_out(generate(n_events=1_000, n_users=40, n_items=50, seed=2))
    torch.manual_seed(0)
    fm = build_model(split.log, d_model=8, n_layers=1, n_heads=2, context_len=6, event_fields=("item",))
    checkpoint.save(fm, tmp_path / "fm", {"data": "in-memory"}, Vocabulary.from_log(split.log))
    checkpoint.save_adapter(Adapter(fm, "head"), fm, tmp_path / "jp", "region-jp", {})
    export_triton(tmp_path / "fm", tmp_path / "repo", name="recs", k=K, adapters={"": tmp_path / "jp"}, max_batch=32, delay_us=500)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["recs", "recs_outcome"]
    outcome = tmp_path / "repo" / "recs_outcome"
    assert sorted(str(p.relative_to(outcome)) for p in outcome.rglob("*") if p.is_file()) == ["1/model.py", "config.pbtxt"]
    assert (outcome / "1" / "model.py").read_text() == (Path(protocol.__file__).with_name("outcome_model.py")).read_text()
    config = (outcome / "config.pbtxt").read_text()
    for line in ('name: "recs_outcome"', 'backend: "python"', "max_batch_size: 32", "max_queue_delay_microseconds: 500",
                 '{ name: "OUTCOME" data_type: TYPE_STRING dims: [ 1 ] }',
                 '{ name: "POSITION" data_type: TYPE_INT32 dims: [ 1 ] optional: true }',
                 '{ name: "TASK" data_type: TYPE_STRING dims: [ 1 ] optional: true }', '{ name: "ACK" data_type: TYPE_INT32 dims: [ 1 ] }',
                 'key: "recommender" value: { string_value: "recs" }', 'key: "recommender_version" value: { string_value: "1" }',
                 'key: "tasks" value: { string_value: "fm,region-jp" }', f'key: "top_k" value: {{ string_value: "{K}" }}'):
        assert line in config, line
    assert str(tmp_path).encode() not in config.encode()
