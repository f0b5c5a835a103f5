"""The exported model on the real Triton server (from the nvidia-pytriton wheel), served from a
relocated, read-only copy of the repository: raw IDs in and out over HTTP and gRPC, a task per
request, every event field, and exactly the ranking evaluate() computes for the same history."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as thttp

from fmrec import checkpoint
from fmrec.data.movielens import load_ml100k
from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import AdaptedModel, Adapter
from fmrec.nn.fm import FoundationModel
from fmrec.serving.client import Event, Ranked, RecommenderClient
from fmrec.serving.export import export_triton, set_faults
from fmrec.serving.infer import quantize_int8
from fmrec.serving.server import TritonServer
from fmrec.train.loop import TrainSettings
from fmrec.train.pretrain import build_model, pretrain
from fmrec.vocab import Vocabulary
from tests.model.serving_cases import assert_same_ranking, evaluated_scores, raw_history, with_device

T, K = 32, 20
FIELDS = ("item", "action", "timeGap", "hourOfDay", "dayOfWeek", "relativeTime", "device")


@pytest.fixture(scope="module")
def ml() -> LeaveOneOut:
    return leave_one_out(load_ml100k())


@pytest.fixture(scope="module")
def fielded_split() -> LeaveOneOut:
    return leave_one_out(with_device(generate(n_events=6_000, n_users=150, n_items=200, seed=5)))


def _save(model: FoundationModel, split: LeaveOneOut, out: Path) -> Path:
    checkpoint.save(model, out, {"data": "in-memory"}, Vocabulary.from_log(split.log, split.train_mask()))
    return out


@pytest.fixture(scope="module")
def trained(ml: LeaveOneOut, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ML-100K FM (1 epoch) and a `liked` adapter that ranks differently from it."""
    model = build_model(ml.log, d_model=32, n_layers=1, n_heads=2, context_len=T, event_fields=("item", "action", "timeGap"))
    pretrain(model, ml, TrainSettings(epochs=1, batch_size=256, stride=T), log=lambda m: None)
    out = _save(model, ml, tmp_path_factory.mktemp("fm"))
    torch.manual_seed(1)
    adapter = Adapter(model, "bottleneck", 8)
    torch.nn.init.normal_(adapter.up.weight, std=0.3)
    torch.nn.init.normal_(adapter.item_bias, std=0.3)
    checkpoint.save_adapter(adapter, model, out / "liked", "liked", {})
    return out


@pytest.fixture(scope="module")
def fielded(fielded_split: LeaveOneOut, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained with hour of day, day of week and a device context field."""
    model = build_model(fielded_split.log, d_model=16, n_layers=1, n_heads=2, context_len=12, event_fields=FIELDS)
    pretrain(model, fielded_split, TrainSettings(epochs=1, batch_size=64, stride=12), log=lambda m: None)
    return _save(model, fielded_split, tmp_path_factory.mktemp("fielded"))


@pytest.fixture(scope="module")
def server(trained: Path, fielded: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Exported, copied elsewhere (as to a storageUri), the export deleted, served read-only."""
    work = tmp_path_factory.mktemp("triton")
    export_triton(trained, work / "export", name="fmrec", k=K, adapters={"": trained / "liked"})
    export_triton(trained, work / "export", name="fmrec_int8", k=K, int8=True)
    export_triton(fielded, work / "export", name="fielded", k=K)
    set_faults(export_triton(trained, work / "export", name="faulty", k=K), error_share=0.5, latency_ms=300)
    shutil.copytree(work / "export", work / "models")
    shutil.rmtree(work / "export")
    with TritonServer(work / "models", work, read_only=True) as s:
        yield s


def test_the_artifact_is_relocatable_and_needs_no_writes(server: TritonServer, trained: Path) -> None:
    repo = server.repository
    files = sorted(p for p in repo.rglob("*") if p.is_file())
    assert {str(p.relative_to(repo)) for p in files} >= {
        "fmrec/config.pbtxt", "fmrec/1/model.py", "fmrec/1/model.pt", "fmrec/1/serving.json", "fmrec/1/vocab.json",
        "fmrec/1/adapters/liked.pt"}
    for p in files:  # no host path anywhere: neither where it was trained nor where it was exported
        data = p.read_bytes()
        for path in (str(trained), str(repo.parent), "/work/", "/root/"):
            assert path.encode() not in data, f"{p} names the host path {path}"
    assert RecommenderClient(server.http_url).recommend([Event("50", 881250949, "5")]).items
    assert not any(p.name == "__pycache__" for p in repo.rglob("*")), "something wrote into the served repository"
    assert server.proc is not None  # and the server really sees it read-only, as KServe mounts /mnt/models:
    seen_by_server = Path(f"/proc/{server.proc.pid}/root") / str(repo.resolve()).lstrip("/")
    with pytest.raises(OSError, match="Read-only file system"):
        (seen_by_server / "fmrec" / "1" / "probe").write_text("x")


def _codes(split: LeaveOneOut, items: list[str]) -> np.ndarray:
    index = {raw: c for c, raw in enumerate(split.log.item_ids, start=1)}
    return np.array([index[i] for i in items], dtype=np.int64)


def _events(split: LeaveOneOut, user: int, shuffle: bool = True) -> list[Event]:
    h = raw_history(split, user)
    context = [{n: h[n][i] for n in split.log.context} for i in range(len(h["items"]))]  # type: ignore[index]
    events = [Event(i, int(t), a, c) for i, t, a, c in zip(h["items"], h["timestamps"], h["actions"], context, strict=True)]
    if shuffle:  # the server orders events by time itself
        events = [events[i] for i in np.random.default_rng(user).permutation(len(events))]
    return events


def _users(split: LeaveOneOut, context_len: int, n_long: int, n_short: int) -> np.ndarray:
    lengths = np.array([len(split.history(int(u), "test")) for u in split.test_users])
    long = split.test_users[lengths > context_len + 1][:n_long]
    short = split.test_users[lengths <= context_len][:n_short]
    assert len(long) == n_long and len(short) == n_short
    return np.concatenate([long, short])


def _concurrently(server: TritonServer, model: str, jobs: list[tuple[int, list[Event], str]]) -> dict[tuple[int, str], Ranked]:
    """Send each job (user, history, task) as its own request from 8 threads, HTTP and gRPC alternating."""
    local = threading.local()

    def one(job: tuple[int, list[Event], str]) -> tuple[tuple[int, str], Ranked]:
        if not hasattr(local, "clients"):
            local.clients = (RecommenderClient(server.http_url, model), RecommenderClient(server.grpc_url, model, "grpc"))
        user, events, task = job
        return (user, task), local.clients[user % 2].recommend(events, task=task, k=K)

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, jobs))


def test_served_topk_equals_evaluated_topk_for_the_fm_and_an_adapter(server: TritonServer, trained: Path,
                                                                      ml: LeaveOneOut) -> None:
    """64 ML-100K users, 56 with histories longer than the context, each its own request, the FM's
    and the adapter's requests interleaved so Triton's dynamic batches mix tasks."""
    users = _users(ml, T, 56, 8)
    fm, _ = checkpoint.load(trained)
    adapter, _ = checkpoint.load_adapter(trained / "liked", fm)
    stats_before = _stats(server, "fmrec")
    got = _concurrently(server, "fmrec", [(int(u), _events(ml, int(u)), task) for u in users for task in ("fm", "liked")])
    for task, model in (("fm", fm), ("liked", AdaptedModel(fm, adapter))):
        want = evaluated_scores(model, ml, users)
        for b, u in enumerate(users):
            r = got[(int(u), task)]
            assert_same_ranking(_codes(ml, r.items), want[b], f"{u} ({task})", r.scores)
    assert any(got[(int(u), "fm")].items != got[(int(u), "liked")].items for u in users), "the adapter should rank differently"
    requests, executions = (a - b for a, b in zip(_stats(server, "fmrec"), stats_before, strict=True))
    assert requests == 2 * len(users) and executions < requests, "Triton should have batched concurrent requests"


def _stats(server: TritonServer, model: str) -> tuple[int, int]:
    s = thttp.InferenceServerClient(server.http_url).get_inference_statistics(model)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def test_int8_serves_the_offline_int8_model_from_int8_weights(server: TritonServer, trained: Path, ml: LeaveOneOut) -> None:
    """One request carries 24 users (rows padded with "" items). Triton's int8 model loads the int8
    weights written at export, and ranks exactly as evaluation ranks the offline int8 model, both the
    exported folder's and the one quantised here from the fp32 checkpoint."""
    version = server.repository / "fmrec_int8" / "1"
    blob = torch.load(version / "model.pt", weights_only=True)
    assert blob["state_dict"]["items.ids.weight_q"].dtype == torch.int8, "the exported item table should be int8 on disk"
    assert (version / "model.pt").stat().st_size * 3 < (server.repository / "fmrec" / "1" / "model.pt").stat().st_size
    users = _users(ml, T, 20, 4)
    got = RecommenderClient(server.http_url, "fmrec_int8").recommend_many([_events(ml, int(u), shuffle=False) for u in users], k=K)
    exported, _ = checkpoint.load(version)
    fm, _ = checkpoint.load(trained)
    for offline in (exported, quantize_int8(fm)):
        want = evaluated_scores(offline, ml, users)
        for b, u in enumerate(users):
            assert_same_ranking(_codes(ml, got[b].items), want[b], u, got[b].scores)


def test_a_model_with_time_and_device_fields_serves_exactly(server: TritonServer, fielded: Path,
                                                                 fielded_split: LeaveOneOut) -> None:
    users = _users(fielded_split, 12, 20, 5)
    got = _concurrently(server, "fielded", [(int(u), _events(fielded_split, int(u)), "") for u in users])
    fm, _ = checkpoint.load(fielded)
    assert {"hourOfDay", "dayOfWeek", "relativeTime", "device"} <= set(fm.cfg.event_fields)
    want = evaluated_scores(fm, fielded_split, users)
    for b, u in enumerate(users):
        r = got[(int(u), "")]
        assert_same_ranking(_codes(fielded_split, r.items), want[b], u, r.scores)


def _metrics(server: TritonServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out = {}
    for name, labels, value in re.findall(r'^(fmrec_\w+)\{([^}]*)\} (\S+)$', text, flags=re.M):
        out[(name, frozenset(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(value)
    return out


def _total(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in m.items() if n == name and set(labels.items()) <= ls)


def test_unknown_items_are_served_and_counted_and_metrics_are_per_task(server: TritonServer, ml: LeaveOneOut) -> None:
    before = _metrics(server)
    assert ("fmrec_recommended_items_total", frozenset({("model", "fmrec"), ("version", "1"), ("task", "liked"),
                                                        ("decile", "10")})) in before  # every series exists from start-up
    client = RecommenderClient(server.http_url)
    history = _events(ml, int(ml.test_users[0]))
    noisy = [*history, Event("no-such-movie", 893286700, "5"), Event("another-new-one", 893286701, "6")]
    answers = [client.recommend(noisy, task="liked", k=7) for _ in range(3)]
    assert all(len(a.items) == 7 and "no-such-movie" not in a.items for a in answers)
    after = _metrics(server)

    def delta(name: str, **labels: str) -> float:
        return _total(after, name, model="fmrec", **labels) - _total(before, name, model="fmrec", **labels)

    assert delta("fmrec_unknown_values_total", task="liked", field="item") == 6
    assert delta("fmrec_unknown_values_total", task="liked", field="action") == 3  # "6" is no rating
    assert delta("fmrec_unknown_values_total", task="fm") == 0
    assert delta("fmrec_recommended_items_total", task="liked") == 3 * 7
    assert delta("fmrec_top_score_count", task="liked") == 3 and delta("fmrec_top_score_count", task="fm") == 0
    assert delta("fmrec_history_events_total", task="liked") == 3 * len(noisy)
    deciles = {int(dict(ls)["decile"]) for (n, ls), v in after.items()
               if n == "fmrec_recommended_items_total" and dict(ls)["task"] == "liked" and v > before.get((n, ls), 0)}
    assert deciles and deciles <= set(range(1, 11))


def _post(server: TritonServer, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _json_inputs(**inputs: tuple[str, list[Any]]) -> dict[str, Any]:
    return {"inputs": [{"name": n, "datatype": dt, "shape": [1, len(data)], "data": data} for n, (dt, data) in inputs.items()]}


@pytest.mark.parametrize(("inputs", "message"), [
    ({"TASK": ("BYTES", ["nope"])}, "unknown TASK 'nope': this model serves \\['fm', 'liked'\\]"),
    ({"K": ("INT32", [K + 1])}, f"K={K + 1} is outside 1..{K}"),
    ({"ACTIONS": ("BYTES", ["5"])}, "ACTIONS has shape \\[1, 1\\]; send \\[1, 2\\] like ITEMS"),
], ids=["unknown-task", "k-too-large", "misaligned-actions"])
def test_bad_requests_are_400_with_the_reason(server: TritonServer, inputs: dict[str, tuple[str, list[Any]]], message: str) -> None:
    base = {"ITEMS": ("BYTES", ["50", "172"]), "TIMESTAMPS": ("INT64", [881250949, 881251000]), "ACTIONS": ("BYTES", ["5", "4"])}
    status, body = _post(server, "fmrec", _json_inputs(**(base | inputs)))
    assert status == 400 and re.search(message, body["error"]), body
    status, _ = _post(server, "fmrec", _json_inputs(**base))
    assert status == 200  # and the model keeps serving


def test_injected_faults_fail_a_share_of_requests_late_and_triton_counts_them(server: TritonServer) -> None:
    """The test-only faults of a bad canary: about half the (one-request) batches are a 500 naming the fault, every
    answer comes at least 300 ms late, and Triton's own failure counter (what the analysis reads) sees them."""
    body = _json_inputs(ITEMS=("BYTES", ["50", "172"]), TIMESTAMPS=("INT64", [881250949, 881251000]), ACTIONS=("BYTES", ["5", "4"]))
    codes, slowest_first = [], float("inf")
    for _ in range(40):
        start = time.perf_counter()
        status, answer = _post(server, "faulty", body)
        slowest_first = min(slowest_first, time.perf_counter() - start)
        codes.append(status)
        if status != 200:
            assert "fault injected: parameter fault_error_share=0.5" in answer["error"], answer
    assert set(codes) == {200, 500} and 8 <= codes.count(500) <= 32, codes
    assert slowest_first >= 0.3
    metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    failed = re.findall(r'nv_inference_request_failure\{[^}]*model="faulty"[^}]*\} (\d+)', metrics)
    assert sum(map(int, failed)) == codes.count(500), failed
    status, _ = _post(server, "fmrec", body)
    assert status == 200  # the other models in the same server are untouched
