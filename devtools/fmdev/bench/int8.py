"""int8 against fp32 on the same trained FM, offline (`python -m fmdev.bench int8 --model DIR ...`):
ranking quality on the test split, how many users' top-10 lists the int8 model changes, and the
exported sizes. The int8 model is the one `export --int8` writes and Triton serves (the served
top-k equals it; tests/integration/test_triton.py checks that)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut
from fmrec.eval.evaluate import evaluate, ranked_scores
from fmrec.nn.fm import FoundationModel
from fmrec.serving.artifact import dir_bytes
from fmrec.serving.export import export_triton
from fmrec.serving.infer import quantize_int8


def top_k(model: torch.nn.Module, split: LeaveOneOut, k: int = 10) -> npt.NDArray[np.int64]:
    """(users, k): each test user's top-k items in order, seen items filtered, as evaluate() ranks them."""
    assert isinstance(model, FoundationModel)
    rows = [scores.topk(k, dim=1).indices.cpu().numpy() for _, scores in ranked_scores(model, split, split.test_users)]
    return np.concatenate(rows)


def top_k_agreement(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> tuple[float, float]:
    """(share of users whose top-k list is the same, in the same order; share of top-k items of `a`
    that are not in the user's top-k of `b`)."""
    same = float((a == b).all(axis=1).mean())
    missing = sum(len(set(x) - set(y)) for x, y in zip(a.tolist(), b.tolist(), strict=True))
    return same, missing / a.size


def compare(model_dir: Path, split: LeaveOneOut) -> dict[str, float]:
    fm, _ = checkpoint.load(model_dir)
    q = quantize_int8(fm)
    fp32, int8 = evaluate(fm, split), evaluate(q, split)
    same, changed = top_k_agreement(top_k(fm, split), top_k(q, split))
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        export_triton(model_dir, repo, name="fp32", k=10)
        export_triton(model_dir, repo, name="int8", k=10, int8=True)
        sizes = {f"{n}_bytes": float(dir_bytes(repo / n)) for n in ("fp32", "int8")}
        sizes |= {f"{n}_model_pt_bytes": float((repo / n / "1" / "model.pt").stat().st_size) for n in ("fp32", "int8")}
    return {"ndcg10_fp32": fp32["NDCG@10"], "ndcg10_int8": int8["NDCG@10"], "hr10_fp32": fp32["HR@10"], "hr10_int8": int8["HR@10"],
            "same_top10": same, "top10_items_changed": changed, **sizes}


def table(rows: dict[str, dict[str, float]]) -> str:
    out = ["| model | NDCG@10 fp32 → int8 | change | HR@10 fp32 → int8 | users with the same top-10 | top-10 items changed | folder MB fp32 → int8 |",
           "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        change = (r["ndcg10_int8"] / r["ndcg10_fp32"] - 1) * 100
        out.append(f"| {name} | {r['ndcg10_fp32']:.5f} → {r['ndcg10_int8']:.5f} | {change:+.2f}% | {r['hr10_fp32']:.5f} → {r['hr10_int8']:.5f} "
                   f"| {r['same_top10']:.1%} | {r['top10_items_changed']:.2%} | {r['fp32_bytes'] / 1e6:.3f} → {r['int8_bytes'] / 1e6:.3f} "
                   f"({r['fp32_bytes'] / r['int8_bytes']:.2f}x) |")
    return "\n".join(out)
