"""The tuned benchmark: our FM against RecTools SASRec, BERT4Rec and HSTU on ML-100K, one protocol for all.

Protocol, applied to every model alike (the README states it):
- split: per user the last event is test, the second-to-last validation (ties on timestamp broken
  by the per-user hash of fmrec.data.schema.tie_keys, the same sequences for every model);
- training: every event before the validation event;
- selection: validation NDCG@10 is checked every `every` epochs; the checkpoint with the best one
  is the run's model (training stops after `patience` checks without a gain, or at `max_epochs`);
  the grid point is chosen by the same number. Nothing is ever chosen on test;
- scoring: the selected checkpoint ranks all items for the test event, with the validation event
  in the history; seen items filtered; HR@k and NDCG@k.

`tune` runs a grid with one seed and appends each finished point to a JSON file (so it resumes);
`bench` reruns the chosen point of every model with several seeds, prints mean and spread, train
time, and a paired bootstrap 95% interval of the FM's NDCG@10 difference to the best baseline
(chosen on validation) over test users, and writes every run's per-user ranks to JSON so the table
can be printed again without training (`report`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from fmrec.data.split import LeaveOneOut
from fmrec.train import TrainSettings, build_model, ndcg_at, ranking_metrics, target_ranks, train

KS = (10, 20, 50)
BASELINES = ("sasrec", "bert4rec", "hstu")
FM_DEFAULTS: dict[str, Any] = {
    "d_model": 64, "n_layers": 2, "n_heads": 2, "context_len": 200, "dropout": 0.2, "item_id_dropout": 0.1,
    "event_fields": ["item", "action", "timeGap"], "objectives": {"nextItem": 1.0},
    "epochs": 40, "lr": 3e-3, "batch_size": 128,
}


# The FM's own knobs, each changed alone from its 2x64 context-50 point (the best shape on the first
# grid): they make the ablation table, and like every point they are judged on validation only.
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
    base = {**FM_DEFAULTS, "context_len": 50, "d_model": 64}
    grid["fm"] = [{**FM_DEFAULTS, "context_len": L, "d_model": d} for L, d in shapes] + [{**base, **v} for v in FM_VARIANTS]
    return grid


@dataclass(frozen=True)
class Protocol:
    every: int = 5  # epochs between validation checks
    patience: int = 3  # checks without a validation gain before stopping
    max_epochs: int = 100


class Selector:
    """Early stopping on validation NDCG@10: remembers the best check and says when to stop."""

    def __init__(self, protocol: Protocol) -> None:
        self.p = protocol
        self.best = -1.0
        self.best_epoch = 0
        self.bad = 0
        self.curve: list[dict[str, float]] = []

    def check(self, epoch: int, val_ndcg: float) -> tuple[bool, bool]:
        """Record a check; returns (is the new best, stop now)."""
        self.curve.append({"epoch": epoch, "val_NDCG@10": round(val_ndcg, 5)})
        improved = val_ndcg > self.best
        if improved:
            self.best, self.best_epoch, self.bad = val_ndcg, epoch, 0
        else:
            self.bad += 1
        return improved, self.bad >= self.p.patience or epoch >= self.p.max_epochs


class Clock:
    """Training time of one run, without its validation checks: wall seconds, and the process's CPU
    seconds (all its threads), which another job on the machine inflates far less than wall time."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.best_wall = self.best_cpu = 0.0
        self._t: tuple[float, float] | None = None

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        assert self._t is not None, "Clock.stop() without start()"
        self.wall += time.perf_counter() - self._t[0]
        self.cpu += time.process_time() - self._t[1]
        self._t = None

    def mark_best(self) -> None:
        self.best_wall, self.best_cpu = self.wall, self.cpu

    def record(self) -> dict[str, float]:
        return {"train_s_to_best": round(self.best_wall, 1), "train_s_total": round(self.wall, 1),
                "train_cpu_s_to_best": round(self.best_cpu, 1), "train_cpu_s_total": round(self.cpu, 1)}


# ---------------------------------------------------------------- our FM

def run_fm(split: LeaveOneOut, config: dict[str, Any], seed: int, protocol: Protocol,
           log: Callable[[str], None]) -> dict[str, Any]:
    cfg = dict(config)
    epochs, lr, batch = int(cfg.pop("epochs")), float(cfg.pop("lr")), int(cfg.pop("batch_size"))
    weight_decay, stride = float(cfg.pop("weight_decay", 0.0)), int(cfg.pop("stride", cfg["context_len"]))
    ema = float(cfg.pop("ema", 0.0))
    cfg["event_fields"] = tuple(cfg["event_fields"])
    torch.manual_seed(seed)
    model = build_model(split.log, **cfg)
    settings = TrainSettings(epochs=min(epochs, protocol.max_epochs), batch_size=batch, lr=lr, seed=seed,
                             weight_decay=weight_decay, stride=stride, ema=ema, device="cpu")
    sel = Selector(protocol)
    clock = Clock()
    state: dict[str, Any] = {"clock": clock, "test": np.zeros(0, dtype=np.int64)}
    clock.start()

    def on_epoch(epoch: int, rec: dict[str, float]) -> bool:
        clock.stop()
        stop = False
        if epoch % protocol.every == 0 or epoch == settings.epochs:
            val = float(ndcg_at(target_ranks(model, split, "val", split.val_users)).mean())
            best, stop = sel.check(epoch, val)
            if best:
                state["test"] = target_ranks(model, split, "test", split.test_users)
                clock.mark_best()
            log(f"  fm epoch {epoch}: val NDCG@10 {val:.4f}{' *' if best else ''}")
        clock.start()
        return stop

    train(model, split, settings, stage="val", on_epoch=on_epoch, log=lambda m: None)
    return _result("fm", config, seed, sel, state, n_params=model.num_params())


# ---------------------------------------------------------------- RecTools

def rectools_frame(split: LeaveOneOut, stage: str = "test") -> pd.DataFrame:
    """Training interactions for RecTools, ordered exactly as ours.

    Ties on timestamp are broken with microseconds in our (user, timestamp, item) order, so
    RecTools sees the same sequences (and HSTU's relative-time attention the real times)."""
    log = split.log
    keep = split.train_mask(stage)
    frame = pd.DataFrame({"user_id": log.user[keep], "item_id": log.item[keep], "ts": log.timestamp[keep]})
    tie = frame.groupby(["user_id", "ts"]).cumcount().to_numpy()
    frame["datetime"] = pd.to_datetime(frame["ts"], unit="s") + pd.to_timedelta(tie, unit="us")
    frame["weight"] = 1.0
    return frame.drop(columns="ts")


def rectools_dataset(split: LeaveOneOut, stage: str) -> Any:
    from rectools import Columns
    from rectools.dataset import Dataset

    frame = rectools_frame(split, stage).rename(columns={"user_id": Columns.User, "item_id": Columns.Item,
                                                         "datetime": Columns.Datetime, "weight": Columns.Weight})
    return Dataset.construct(frame)


def rectools_ranks(model: Any, dataset: Any, split: LeaveOneOut, stage: str, users: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0-based rank of each user's `stage` target in the model's top-50 (50 = not in it), seen items
    filtered by RecTools from `dataset` (the history before the target)."""
    from rectools import Columns
    k = max(KS)
    targets = split.log.item[[split.target(int(u), stage) for u in users]]
    context = None
    if model.require_recommend_context:  # HSTU attends over relative time: it is told when the request happens
        when = split.log.timestamp[[split.target(int(u), stage) for u in users]]
        context = pd.DataFrame({Columns.User: users, Columns.Datetime: pd.to_datetime(when, unit="s") + pd.Timedelta(seconds=1),
                                Columns.Weight: 1.0})
    reco = model.recommend(users=users, dataset=dataset, k=k, filter_viewed=True, context=context, on_unsupported_targets="ignore")
    target = pd.Series(targets, index=users)
    hit = reco[reco[Columns.Item].to_numpy() == target.reindex(reco[Columns.User]).to_numpy()]
    rank = pd.Series(k, index=users, dtype=np.int64)
    rank.loc[hit[Columns.User].to_numpy()] = hit[Columns.Rank].to_numpy() - 1
    out: npt.NDArray[np.int64] = rank.to_numpy()
    return out


def run_rectools(split: LeaveOneOut, kind: str, config: dict[str, Any], seed: int, protocol: Protocol,
                 log: Callable[[str], None]) -> dict[str, Any]:
    from pytorch_lightning import seed_everything
    from rectools.models import BERT4RecModel, HSTUModel, SASRecModel

    seed_everything(seed, workers=True, verbose=False)
    cfg = dict(config)
    kwargs: dict[str, Any] = {}
    if "logits_t" in cfg:
        kwargs["lightning_module_kwargs"] = {"logits_t": cfg.pop("logits_t")}
    cls = {"sasrec": SASRecModel, "bert4rec": BERT4RecModel, "hstu": HSTUModel}[kind]
    model = cls(loss="softmax", epochs=protocol.every, deterministic=True, verbose=0, **cfg, **kwargs)
    train_ds, test_ds = rectools_dataset(split, "val"), rectools_dataset(split, "test")
    sel = Selector(protocol)
    clock = Clock()
    state: dict[str, Any] = {"clock": clock, "test": np.zeros(0, dtype=np.int64)}
    epoch = 0
    while True:
        clock.start()
        model.fit_partial(train_ds, min_epochs=protocol.every, max_epochs=protocol.every)
        clock.stop()
        epoch += protocol.every
        val = float(ndcg_at(rectools_ranks(model, train_ds, split, "val", split.val_users)).mean())
        best, stop = sel.check(epoch, val)
        if best:
            state["test"] = rectools_ranks(model, test_ds, split, "test", split.test_users)
            clock.mark_best()
        log(f"  {kind} epoch {epoch}: val NDCG@10 {val:.4f}{' *' if best else ''}")
        if stop:
            break
    n_params = sum(p.numel() for p in model.torch_model.parameters())
    return _result(kind, config, seed, sel, state, n_params=n_params)


def _result(kind: str, config: dict[str, Any], seed: int, sel: Selector, state: dict[str, Any], n_params: int) -> dict[str, Any]:
    ranks = state["test"]
    return {"model": kind, "config": config, "seed": seed, "params": int(n_params), "best_epoch": sel.best_epoch,
            "val_NDCG@10": round(sel.best, 5), "test": {k: round(v, 5) for k, v in ranking_metrics(ranks, KS).items()},
            **state["clock"].record(),
            "curve": sel.curve, "test_ranks": ranks.tolist()}


def run_one(split: LeaveOneOut, kind: str, config: dict[str, Any], seed: int, protocol: Protocol,
            log: Callable[[str], None]) -> dict[str, Any]:
    if kind == "fm":
        return run_fm(split, config, seed, protocol, log)
    return run_rectools(split, kind, config, seed, protocol, log)


# ---------------------------------------------------------------- grid and seeds

def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
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
            if any(p["model"] == kind and _same(p["config"], config) for p in doc["points"]):
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
        raise SystemExit(f"{tuning} does not exist: run `python -m fmrec tune` (make tune) first")
    _same_data(grid, split, tuning)
    picks = chosen(grid)
    missing = [m for m in models if m not in picks]
    if missing:
        raise SystemExit(f"{tuning} has no tuned configuration for {missing}: run `python -m fmrec tune --models {','.join(missing)}` first")
    doc = _load(out) or {"protocol": asdict(protocol), "data": split.log.fingerprint(), "tuning": str(tuning), "runs": []}
    _same_data(doc, split, out)
    for kind in models:
        doc = _retire(out, doc, kind, picks[kind]["config"], log)
        for seed in seeds:
            if any(r["model"] == kind and r["seed"] == seed and _same(r["config"], picks[kind]["config"]) for r in doc["runs"]):
                continue
            tuned = [p for p in grid["points"] if p["model"] == kind and _same(p["config"], picks[kind]["config"])
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
    stale = [r for r in doc["runs"] if r["model"] == kind and not _same(r["config"], config)]
    if stale:
        log(f"[bench] {kind}: {len(stale)} run(s) of a configuration no longer chosen on validation moved to 'superseded'")
        doc["runs"] = [r for r in doc["runs"] if not any(r is x for x in stale)]
        doc.setdefault("superseded", []).extend(stale)
        _save(path, doc)
    return doc


def paired_bootstrap(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over users and its 95% percentile interval from resampling users."""
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(doc: dict[str, Any], split: LeaveOneOut) -> dict[str, Any]:
    """Per model: mean and standard deviation over seeds; the best baseline by validation; the
    FM's paired bootstrap interval against it (per-user NDCG@10 averaged over seeds)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in doc["runs"]:
        rows.setdefault(r["model"], {"runs": []})["runs"].append(r)
    for kind, row in rows.items():
        runs = row["runs"]
        row["seeds"] = len(runs)
        row["config"] = runs[0]["config"]
        row["params"] = runs[0]["params"]
        for key in ("HR@10", "NDCG@10", "NDCG@20", "HR@50"):
            v = np.array([r["test"][key] for r in runs])
            row[key] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        row["val_NDCG@10"] = float(np.mean([r["val_NDCG@10"] for r in runs]))
        row["best_epoch"] = [r["best_epoch"] for r in runs]
        row["train_s"] = float(np.mean([r["train_s_to_best"] for r in runs]))
        cpu = [r["train_cpu_s_to_best"] for r in runs if "train_cpu_s_to_best" in r]  # runs before the Clock have none
        row["train_cpu_s"], row["cpu_runs"] = (float(np.mean(cpu)) if cpu else None), len(cpu)
        row["user_ndcg"] = np.mean([ndcg_at(np.array(r["test_ranks"])) for r in runs], axis=0)
    base = [k for k in rows if k != "fm"]
    out: dict[str, Any] = {"rows": rows, "users": len(split.test_users)}
    if "fm" in rows and base:
        best = max(base, key=lambda k: rows[k]["val_NDCG@10"])
        mean, lo, hi = paired_bootstrap(rows["fm"]["user_ndcg"], rows[best]["user_ndcg"])
        out.update(best=best, diff=mean, lo=lo, hi=hi, ratio=rows["fm"]["NDCG@10"][0] / rows[best]["NDCG@10"][0])
    return out


NAMES = {"fm": "fmrec FM", "sasrec": "RecTools SASRec", "bert4rec": "RecTools BERT4Rec", "hstu": "RecTools HSTU"}


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    if isinstance(v, dict):
        return "+".join(f"{k} {w:g}" for k, w in v.items())
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(kind: str, config: dict[str, Any]) -> str:
    if kind == "fm":  # the shape, then whatever differs from FM_DEFAULTS
        shape = ("n_layers", "d_model", "context_len")
        diff = [f"{k} {_short(v)}" for k, v in config.items() if k not in shape and FM_DEFAULTS.get(k) != v]
        return ", ".join([f"{config['n_layers']}x{config['d_model']}, context {config['context_len']}", *diff])
    t = f", logits_t {config['logits_t']}" if "logits_t" in config else ""
    return f"{config['n_blocks']}x{config['n_factors']}, length {config['session_max_len']}{t}"


def table(summary: dict[str, Any]) -> str:
    """The benchmark as a Markdown table, best test NDCG@10 first, and the FM against the best
    baseline (chosen on validation): paired bootstrap interval and ratio."""
    lines = [f"ML-100K leave-one-out, {summary['users']} test users, full ranking, seen items filtered; "
             "mean ± sd over seeds, each run's epoch chosen on validation; train s: wall seconds to the selected "
             "epoch (CPU s: the process's CPU seconds, where recorded)", "",
             "| model | config | seeds | val NDCG@10 | test HR@10 | test NDCG@10 | test NDCG@20 | selected epochs | train s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind in sorted(summary["rows"], key=lambda k: -summary["rows"][k]["NDCG@10"][0]):
        r = summary["rows"][kind]
        cells = " | ".join(f"{r[k][0]:.4f} ± {r[k][1]:.4f}" for k in ("HR@10", "NDCG@10", "NDCG@20"))
        cpu = "" if r["train_cpu_s"] is None else f"{r['train_cpu_s']:.0f}" + (
            "" if r["cpu_runs"] == r["seeds"] else f" ({r['cpu_runs']} of {r['seeds']} runs)")
        lines.append(f"| {NAMES[kind]} | {describe(kind, r['config'])} | {r['seeds']} | {r['val_NDCG@10']:.4f} | {cells} | "
                     f"{', '.join(map(str, r['best_epoch']))} | {r['train_s']:.0f} | {cpu} |")
    if "best" in summary:
        lines += ["", f"FM - {NAMES[summary['best']]} (the best baseline on validation), test NDCG@10: {summary['diff']:+.4f} "
                  f"(paired bootstrap 95% interval over users {summary['lo']:+.4f} .. {summary['hi']:+.4f}); "
                  f"ratio {summary['ratio']:.3f}x (target 1.15x)"]
    return "\n".join(lines)


def grid_table(doc: dict[str, Any]) -> str:
    """The tuning grid as a Markdown table: validation NDCG@10 of every point, the chosen one in bold
    with its test metrics (one seed; `bench` reruns it with several)."""
    picks = chosen(doc)
    lines = ["| model | config | val NDCG@10 | selected epoch | train s (to it / all) | test NDCG@10 | test HR@10 |",
             "|---|---|---|---|---|---|---|"]
    for p in sorted(doc["points"], key=lambda p: (list(NAMES).index(p["model"]), -p["val_NDCG@10"])):
        pick = _same(picks[p["model"]]["config"], p["config"])
        b = "**" if pick else ""
        test = (f"{b}{p['test']['NDCG@10']:.4f}{b}", f"{p['test']['HR@10']:.4f}") if pick else ("", "")
        lines.append(f"| {NAMES[p['model']]} | {describe(p['model'], p['config'])} | {b}{p['val_NDCG@10']:.4f}{b} | {p['best_epoch']} | "
                     f"{p['train_s_to_best']:.0f} / {p['train_s_total']:.0f} | {test[0]} | {test[1]} |")
    return "\n".join(lines)


def ablation_table(doc: dict[str, Any]) -> str:
    """The FM's points against its base point (2x64, context 50, FM_DEFAULTS otherwise) as a
    Markdown table: what changed, validation NDCG@10 and its change. Validation only: the base is
    not the chosen point, and no test number is shown."""
    base_config = {**FM_DEFAULTS, "context_len": 50, "d_model": 64}
    fm = [p for p in doc["points"] if p["model"] == "fm"]
    base = next((p for p in fm if _same(p["config"], base_config)), None)
    if base is None:
        raise SystemExit("the tuning file has no FM base point (2x64, context 50): run `python -m fmrec tune --models fm`")
    lines = ["| change from the base point (2x64, context 50) | val NDCG@10 | vs base | selected epoch | train s (to it) |",
             "|---|---|---|---|---|"]
    for p in sorted(fm, key=lambda p: -p["val_NDCG@10"]):
        changed = {k: v for k, v in p["config"].items() if base_config.get(k) != v}
        what = "none (the base point)" if not changed else ", ".join(
            f"{k} {_short(v)}" for k, v in changed.items())
        delta = (p["val_NDCG@10"] / base["val_NDCG@10"] - 1) * 100
        lines.append(f"| {what} | {p['val_NDCG@10']:.4f} | {delta:+.1f}% | {p['best_epoch']} | {p['train_s_to_best']:.0f} |")
    return "\n".join(lines)


def log_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
