"""What each kind of task costs to serve, in process (`python -m fmdev.bench adapter-latency`): the
served Recommender.run over one batch of full ML-100K histories, one batch per task, timed after a
warm-up. The FM, a bottleneck or head task share one backbone pass; a LoRA task runs the backbone
again; a distilled student runs only its own small network."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut
from fmrec.serving.export import load_adapters, vocabulary
from fmrec.serving.infer import FM_TASK, Recommender
from fmrec.serving.request import Query


def whole_history(split: LeaveOneOut, user: int, task: str) -> Query:
    """A user's events before the test target, raw, as a client sends them."""
    log, rows = split.log, split.history(user, "test")
    return Query(items=[log.item_ids[c - 1] for c in log.item[rows]], actions=[log.action_ids[c - 1] for c in log.action[rows]],
                 timestamps=log.timestamp[rows].copy(),
                 context={name: [log.context_ids[name][c - 1] for c in codes[rows]] for name, codes in log.context.items()},
                 task=task)


def latency(model_dir: Path, adapters: dict[str, Path], split: LeaveOneOut, batch: int = 64, repeats: int = 20,
            warmup: int = 3) -> dict[str, dict[str, float]]:
    """Per task ("" is the FM): median and fastest milliseconds of Recommender.run over `batch` rows."""
    fm, meta = checkpoint.load(model_dir)
    loaded, _ = load_adapters(fm, adapters)
    rec = Recommender(fm, vocabulary(model_dir, meta), loaded)
    users = [int(u) for u in split.test_users[:batch]]
    out: dict[str, dict[str, float]] = {}
    for task in rec.tasks:
        rows = [rec.prepare(whole_history(split, u, "" if task == FM_TASK else task)) for u in users]
        times = []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            rec.run(rows)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
        out[task] = {"median_ms": statistics.median(times), "min_ms": min(times)}
    return out
