"""Consolidation benchmark: N tasks as one Triton model with N adapters vs N separately exported
models (each the FM plus one adapter), on the real Triton server: resident memory of the server
and its python-backend processes, artifact size, throughput and p99 at several concurrencies.

Requests cycle through the N tasks; in the separate layout each goes to its task's own model.
Every model has Triton's default here: one CPU instance with one torch thread. The command:
`python -m fmdev.bench consolidation-bench` (make consolidation-bench).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fmdev.bench.serving import load, request_histories
from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut
from fmrec.nn.adapters import Adapter
from fmrec.serving.artifact import dir_bytes
from fmrec.serving.export import export_triton
from fmrec.serving.server import TritonServer


def make_adapters(model_dir: Path, out: Path, n: int, seed: int = 0) -> list[Path]:
    """n distinct bottleneck adapters (width 16) on the FM in model_dir, saved as adapter versions."""
    fm, _ = checkpoint.load(model_dir)
    paths = []
    for i in range(n):
        torch.manual_seed(seed + i)
        a = Adapter(fm, "bottleneck", 16)
        torch.nn.init.normal_(a.up.weight, std=0.05)
        checkpoint.save_adapter(a, fm, out / f"task{i}", f"task{i}", {})
        paths.append(out / f"task{i}")
    return paths


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def memory_mib(pid: int) -> dict[str, float]:
    """RSS and PSS (shared pages split among the processes sharing them) of a process and its descendants."""
    total = {"rss_mib": 0.0, "pss_mib": 0.0}
    for p in _tree(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in rollup:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                total[f"{key.lower()}_mib"] += int(rest.split()[0]) / 1024
    return total


def consolidation_bench(model_dir: Path, split: LeaveOneOut, ns: tuple[int, ...] = (1, 4, 16),
                        concurrencies: tuple[int, ...] = (8, 32), per_level: int = 300, k: int = 100) -> list[dict[str, float | str]]:
    histories = request_histories(split, 128)
    rows: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapters = make_adapters(model_dir, work / "adapters", max(ns))
        for n in ns:
            tasks = tuple(f"task{i}" for i in range(n))
            layouts = {
                "one model": ({"fmrec": adapters[:n]}, [("fmrec", t) for t in tasks]),
                "separate models": ({f"fmrec-{t}": [a] for t, a in zip(tasks, adapters, strict=False)},
                                    [(f"fmrec-{t}", t) for t in tasks]),
            }
            for layout, (models, targets) in layouts.items():
                repo = work / f"repo-{n}-{layout.replace(' ', '-')}"
                for name, ads in models.items():
                    export_triton(model_dir, repo, name=name, k=k, adapters=[("", a) for a in ads])
                with TritonServer(repo, work) as server:
                    assert server.proc is not None
                    load(server.http_url, targets, histories, 2, 4 * len(targets))  # warm every model and task up
                    for c in concurrencies:
                        r = load(server.http_url, targets, histories, c, per_level)
                        rows.append({"tasks": float(n), "layout": layout, "concurrency": float(c),
                                     "artifact_mib": dir_bytes(repo) / 2**20, **memory_mib(server.proc.pid), **r})
    return rows
