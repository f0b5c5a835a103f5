"""The grid, `tune` (every point, one seed) and `bench` (the chosen points, several seeds), and the
JSON files they append to and resume from."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from fmdev.bench.recsys.protocol import BASELINES, Protocol
from fmdev.bench.recsys.runs import run_one
from fmrec.data.split import LeaveOneOut
from fmrec.train.recipe import Recipe

# The FM's first grid point, which the first round varies. Every FM point is recorded as its
# Recipe.to_config(), and points already in the tuning file are matched by it: change a value here
# and every FM point counts as new and reruns. (fmrec's default recipe is the point chosen.)
GRID_ORIGIN = Recipe(d_model=64, n_layers=2, n_heads=2, context_len=200, dropout=0.2, item_id_dropout=0.1,
                     event_fields=("item", "action", "timeGap"), objectives={"nextItem": 1.0}, horizon=None,
                     epochs=40, lr=3e-3, batch_size=128, weight_decay=0.0, stride=None, ema=0.0)
ABLATION_BASE = GRID_ORIGIN.but(context_len=50)  # 2x64, context 50: the best shape of the first round

# The FM's own knobs, each changed alone from ABLATION_BASE: they make the ablation table, and
# like every point they are judged on validation only.
FM_VARIANTS: list[dict[str, Any]] = [
    {"event_fields": ["item"]},
    {"event_fields": ["item", "action"]},
    {"event_fields": ["item", "action", "timeGap", "hourOfDay", "dayOfWeek"]},
    {"event_fields": ["item", "action", "timeGap", "relativeTime"]},
    {"dropout": 0.1},
    {"dropout": 0.3},
    {"item_id_dropout": 0.0},
    {"weight_decay": 0.1},
    {"stride": 25},
    {"n_heads": 4},
    {"n_layers": 3},
    {"context_len": 100},
    {"objectives": {"nextItem": 1.0, "action": 0.2}},
    {"objectives": {"nextItem": 1.0, "multiToken": 0.3}, "horizon": 3},
    {"lr": 1e-3, "epochs": 80},
    {"batch_size": 64},
    {"ema": 0.99},
    # second round: the two knobs that helped alone (relativeTime +5.3%, stride 25 +4.9%), together
    # and with what might add to them (a shorter schedule: every point above peaked at epoch 10)
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 25},
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 25, "epochs": 20},
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 25, "item_id_dropout": 0.0},
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 25, "d_model": 128},
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 10},
    # third round: the 20-epoch schedule (0.1329, the best second-round point) with more capacity or averaging
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 25, "epochs": 20, "d_model": 128},
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 25, "epochs": 20, "n_layers": 3},
    {"event_fields": ["item", "action", "timeGap", "relativeTime"], "stride": 25, "epochs": 20, "ema": 0.99},
]


def default_grid() -> dict[str, list[dict[str, Any]]]:
    """The issue's grid for the baselines (length 50/200 x 64/128 dims, 2 blocks, softmax loss; HSTU
    with RecTools' logit temperature 0.05), the same shapes for the FM, then the FM's variants."""
    shapes = [(50, 64), (200, 128), (50, 128), (200, 64)]  # the tuned point (200, 128) early
    grid: dict[str, list[dict[str, Any]]] = {}
    for kind in BASELINES:
        extra = {"logits_t": 0.05} if kind == "hstu" else {}
        grid[kind] = [{"session_max_len": L, "n_factors": d, "n_blocks": 2, **extra} for L, d in shapes]
    grid["fm"] = ([GRID_ORIGIN.but(context_len=L, d_model=d).to_config() for L, d in shapes]
                  + [ABLATION_BASE.but(**v).to_config() for v in FM_VARIANTS])
    return grid


# ---------------------------------------------------------------- the JSON files

def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


_NUMBERS = re.compile(r"\[\s*([-+\d.eE,\s]+?)\s*\]")


def _save(path: Path, doc: dict[str, Any]) -> None:
    """Indented JSON with every list of numbers (per-user ranks, curves) on one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    text = _NUMBERS.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", json.dumps(doc, indent=1))
    tmp.write_text(text + "\n")
    tmp.replace(path)


def _append(path: Path, doc: dict[str, Any], key: str, record: dict[str, Any]) -> dict[str, Any]:
    """Add one finished run to doc[key] and save, re-reading the file first: two processes (say one
    for the FM and SASRec, one for BERT4Rec and HSTU, on one core each) can share one file."""
    doc = _load(path) or doc
    doc[key].append(record)
    _save(path, doc)
    return doc


def _same_data(doc: dict[str, Any], split: LeaveOneOut, path: Path) -> None:
    """Refuse to add runs to a file made on other data (another event order makes another split)."""
    have, want = doc.get("data", "none recorded"), split.log.fingerprint()
    if have != want:
        raise SystemExit(f"{path} was made on data {have}, not this data ({want}): its runs used another split; "
                         "move it aside and tune again, or use another file")


# ---------------------------------------------------------------- tune and bench

def tune(split: LeaveOneOut, path: Path, models: list[str], protocol: Protocol, seed: int = 0,
         grid: dict[str, list[dict[str, Any]]] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every grid point not yet in `path` (one seed) and record it there; the chosen point of
    each model is the one with the best validation NDCG@10."""
    grid = grid or default_grid()
    doc = _load(path) or {"protocol": asdict(protocol), "data": split.log.fingerprint(), "seed": seed, "points": []}
    if doc["protocol"] != asdict(protocol):
        raise SystemExit(f"{path} was tuned with protocol {doc['protocol']}, not {asdict(protocol)}: use another --tuning file")
    _same_data(doc, split, path)
    for i in range(max(len(v) for v in grid.values())):  # cheap points of every model before dear ones
        for kind in models:
            if i >= len(grid[kind]):
                continue
            config = grid[kind][i]
            if any(p["model"] == kind and same(p["config"], config) for p in doc["points"]):
                continue
            log(f"[tune] {kind} {config}")
            # the grid is judged on validation only; the test ranks are kept so that `bench` need
            # not train the chosen point's tuning seed again
            r = run_one(split, kind, config, seed, protocol, log)
            doc = _append(path, doc, "points", r)
            log(f"[tune] {kind}: val NDCG@10 {r['val_NDCG@10']:.4f} at epoch {r['best_epoch']} ({r['train_s_total']:.0f} s)")
    doc = _load(path) or doc
    doc["chosen"] = chosen(doc)
    _save(path, doc)
    return doc


def chosen(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for p in doc["points"]:
        if p["model"] not in best or p["val_NDCG@10"] > best[p["model"]]["val_NDCG@10"]:
            best[p["model"]] = p
    return {k: {"config": v["config"], "val_NDCG@10": v["val_NDCG@10"], "best_epoch": v["best_epoch"]} for k, v in best.items()}


def bench(split: LeaveOneOut, tuning: Path, out: Path, models: list[str], seeds: list[int], protocol: Protocol,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run each model's chosen configuration with every seed (resuming from `out`). The tuning run
    of the chosen point is that configuration's run for the tuning seed: it is reused where the
    grid kept its per-user test ranks."""
    grid = _load(tuning)
    if not grid:
        raise SystemExit(f"{tuning} does not exist: run `python -m fmdev.bench tune` (make tune) first")
    _same_data(grid, split, tuning)
    picks = chosen(grid)
    missing = [m for m in models if m not in picks]
    if missing:
        raise SystemExit(f"{tuning} has no tuned configuration for {missing}: "
                         f"run `python -m fmdev.bench tune --models {','.join(missing)}` first")
    doc = _load(out) or {"protocol": asdict(protocol), "data": split.log.fingerprint(), "tuning": str(tuning), "runs": []}
    _same_data(doc, split, out)
    for kind in models:
        doc = _retire(out, doc, kind, picks[kind]["config"], log)
        for seed in seeds:
            if any(r["model"] == kind and r["seed"] == seed and same(r["config"], picks[kind]["config"]) for r in doc["runs"]):
                continue
            tuned = [p for p in grid["points"] if p["model"] == kind and same(p["config"], picks[kind]["config"])
                     and "test_ranks" in p and grid.get("seed") == seed and grid.get("protocol") == asdict(protocol)]
            if tuned:
                log(f"[bench] {kind} seed {seed}: the tuning run of this configuration, from {tuning}")
                doc = _append(out, doc, "runs", tuned[0])
            else:
                log(f"[bench] {kind} seed {seed} {picks[kind]['config']}")
                doc = _append(out, doc, "runs", run_one(split, kind, picks[kind]["config"], seed, protocol, log))
    return doc


def _retire(path: Path, doc: dict[str, Any], kind: str, config: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Move `kind`'s runs of a configuration that is no longer the chosen one (a later grid point won
    on validation) from doc["runs"] to doc["superseded"], so the table never mixes configurations."""
    doc = _load(path) or doc
    stale = [r for r in doc["runs"] if r["model"] == kind and not same(r["config"], config)]
    if stale:
        log(f"[bench] {kind}: {len(stale)} run(s) of a configuration no longer chosen on validation moved to 'superseded'")
        doc["runs"] = [r for r in doc["runs"] if not any(r is x for x in stale)]
        doc.setdefault("superseded", []).extend(stale)
        _save(path, doc)
    return doc
