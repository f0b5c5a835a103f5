"""Serving benchmark: the real Triton server, fp32 vs int8, at several client concurrencies
(`python -m fmdev.bench serve-bench`)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut
from fmrec.eval.evaluate import evaluate
from fmrec.serving.artifact import dir_bytes
from fmrec.serving.client import Event, RecommenderClient
from fmrec.serving.export import export_triton
from fmrec.serving.infer import quantize_int8
from fmrec.serving.server import TritonServer


def request_histories(split: LeaveOneOut, n: int) -> list[list[Event]]:
    """One request per test user: the user's whole history before the test event, raw, as a client sends it."""
    log = split.log
    out = []
    for u in split.test_users[:n]:
        rows = split.history(int(u), "test")
        out.append([Event(log.item_ids[log.item[r] - 1], int(log.timestamp[r]), log.action_ids[log.action[r] - 1]) for r in rows])
    return out


def load(url: str, targets: list[tuple[str, str]], histories: list[list[Event]], concurrency: int, total: int) -> dict[str, float]:
    """`concurrency` threads, each with its own HTTP clients, send `total` requests back to back;
    request i goes to the (model, task) targets[i % len(targets)]."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        clients = {model: RecommenderClient(url, model) for model in {m for m, _ in targets}}
        mine: list[float] = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            model, task = targets[i % len(targets)]
            clients[model].recommend(histories[i % len(histories)], task=task)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests": float(len(lat)), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "throughput_rps": len(lat) / elapsed}


def serve_bench(model_dir: Path, split: LeaveOneOut, concurrencies: tuple[int, ...] = (1, 8, 32), per_level: int = 600,
                k: int = 100) -> dict[str, object]:
    fm, _ = checkpoint.load(model_dir)
    q = quantize_int8(fm)
    quality = {"fp32": evaluate(fm, split), "int8": evaluate(q, split)}
    requests = request_histories(split, 256)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_triton(model_dir, work / "repo", name="fmrec", k=k)
        export_triton(model_dir, work / "repo", name="fmrec_int8", k=k, int8=True)
        sizes = {"fp32_bytes": dir_bytes(work / "repo" / "fmrec"), "int8_bytes": dir_bytes(work / "repo" / "fmrec_int8")}
        with TritonServer(work / "repo", work) as server:
            for name in ("fmrec", "fmrec_int8"):
                load(server.http_url, [(name, "")], requests, 4, 64)  # warm-up
                for c in concurrencies:
                    results[f"{name}@{c}"] = load(server.http_url, [(name, "")], requests, c, per_level)
    return {"quality": quality, "sizes": sizes, "latency": results}
