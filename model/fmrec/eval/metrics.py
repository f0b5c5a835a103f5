"""Ranks and ranking metrics: where each user's target lands among the items they have not seen."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from fmrec.data.schema import IntArray


def mask_seen(scores: torch.Tensor, seen: list[IntArray], candidates: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of scores (B, N) with each row's seen items and, when given, every non-candidate at -inf."""
    scores = scores.float().clone()
    for b, items in enumerate(seen):
        scores[b, torch.from_numpy(items).to(scores.device)] = float("-inf")
    if candidates is not None:
        allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        allowed[candidates] = True
        scores[:, ~allowed] = float("-inf")
    return scores


def rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target in its row of scores (B, N); ties count against the target."""
    t = scores.gather(1, target[:, None])  # (B, 1)
    return (scores >= t).sum(1) - 1


def rank_targets(scores: torch.Tensor, target: torch.Tensor, seen: list[IntArray], candidates: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among unseen items (ties count against the target)."""
    return rank_of(mask_seen(scores, seen, candidates), target)


def ndcg_at(ranks: npt.NDArray[np.int64], k: int = 10) -> npt.NDArray[np.float64]:
    """Per-user NDCG@k of 0-based ranks (a miss is 0)."""
    out: npt.NDArray[np.float64] = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return out


def ranking_metrics(ranks: npt.NDArray[np.int64], ks: tuple[int, ...] = (10, 20, 50)) -> dict[str, float]:
    out: dict[str, float] = {"users": float(len(ranks))}
    for k in ks:
        out[f"HR@{k}"] = float((ranks < k).mean())
        out[f"NDCG@{k}"] = float(ndcg_at(ranks, k).mean())
    return out
