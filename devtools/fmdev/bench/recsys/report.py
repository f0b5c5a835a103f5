"""Summaries over seeds, the paired bootstrap interval, and the Markdown tables the README shows."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fmdev.bench.recsys.grid import ABLATION_BASE, GRID_ORIGIN, chosen, same
from fmrec.data.split import LeaveOneOut
from fmrec.eval.metrics import ndcg_at

NAMES = {"fm": "fmrec FM", "sasrec": "RecTools SASRec", "bert4rec": "RecTools BERT4Rec", "hstu": "RecTools HSTU"}


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


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    if isinstance(v, dict):
        return "+".join(f"{k} {w:g}" for k, w in v.items())
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(kind: str, config: dict[str, Any]) -> str:
    if kind == "fm":  # the shape, then whatever differs from the grid's origin
        shape = ("n_layers", "d_model", "context_len")
        origin = GRID_ORIGIN.to_config()
        diff = [f"{k} {_short(v)}" for k, v in config.items() if k not in shape and origin.get(k) != v]
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
        pick = same(picks[p["model"]]["config"], p["config"])
        b = "**" if pick else ""
        test = (f"{b}{p['test']['NDCG@10']:.4f}{b}", f"{p['test']['HR@10']:.4f}") if pick else ("", "")
        lines.append(f"| {NAMES[p['model']]} | {describe(p['model'], p['config'])} | {b}{p['val_NDCG@10']:.4f}{b} | {p['best_epoch']} | "
                     f"{p['train_s_to_best']:.0f} / {p['train_s_total']:.0f} | {test[0]} | {test[1]} |")
    return "\n".join(lines)


def ablation_table(doc: dict[str, Any]) -> str:
    """The FM's points against its base point (ABLATION_BASE: 2x64, context 50, the grid's origin
    otherwise) as a Markdown table: what changed, validation NDCG@10 and its change. Validation
    only: the base is not the chosen point, and no test number is shown."""
    base_config = ABLATION_BASE.to_config()
    fm = [p for p in doc["points"] if p["model"] == "fm"]
    base = next((p for p in fm if same(p["config"], base_config)), None)
    if base is None:
        raise SystemExit("the tuning file has no FM base point (2x64, context 50): run `python -m fmdev.bench tune --models fm`")
    lines = ["| change from the base point (2x64, context 50) | val NDCG@10 | vs base | selected epoch | train s (to it) |",
             "|---|---|---|---|---|"]
    for p in sorted(fm, key=lambda p: -p["val_NDCG@10"]):
        changed = {k: v for k, v in p["config"].items() if base_config.get(k) != v}
        what = "none (the base point)" if not changed else ", ".join(
            f"{k} {_short(v)}" for k, v in changed.items())
        delta = (p["val_NDCG@10"] / base["val_NDCG@10"] - 1) * 100
        lines.append(f"| {what} | {p['val_NDCG@10']:.4f} | {delta:+.1f}% | {p['best_epoch']} | {p['train_s_to_best']:.0f} |")
    return "\n".join(lines)
