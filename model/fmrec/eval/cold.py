"""Cold start: items withheld from training entirely, scored from their metadata alone."""

from __future__ import annotations

import numpy as np
import torch

from fmrec.data.schema import EventLog, IntArray
from fmrec.data.split import LeaveOneOut
from fmrec.eval.evaluate import evaluate
from fmrec.eval.metrics import rank_targets, ranking_metrics
from fmrec.nn.fm import FoundationModel


def cold_items(log: EventLog, share: float = 0.1, seed: int = 0) -> IntArray:
    """A seeded random share of the items (with metadata) to withhold from training."""
    rng = np.random.default_rng(seed)
    items = np.arange(1, log.n_items + 1)
    chosen: IntArray = np.sort(rng.choice(items, size=max(1, int(share * log.n_items)), replace=False)).astype(np.int64)
    return chosen


@torch.no_grad()
def evaluate_cold(model: FoundationModel, split: LeaveOneOut, cold: IntArray, ks: tuple[int, ...] = (10, 20)) -> dict[str, dict[str, float]]:
    """Users whose test item was withheld from training: rank it among the withheld items only.

    The FM scores withheld items from metadata alone (their ID embeddings never trained and are
    switched off). Baselines: random order, and genre popularity (training events per genre)."""
    users = np.array([u for u in split.test_users if split.log.item[split.target(int(u), "test")] in set(cold.tolist())])
    cold_t = torch.from_numpy(cold)
    fm = evaluate(model, split, users=users, ks=ks, cold=cold_t, candidates=cold_t)
    rng = np.random.default_rng(0)
    n = len(cold)
    random_ranks = rng.integers(0, n, len(users))
    out = {"fm_content_only": fm, "random": ranking_metrics(random_ranks, ks)}
    items = split.log.items
    if items is not None:
        keep = split.train_mask("test") & ~np.isin(split.log.item, cold)
        genre_counts = items.genres[split.log.item[keep]].sum(axis=0)
        item_score = (items.genres * genre_counts).sum(axis=1) / np.maximum(items.genres.sum(axis=1), 1)
        item_score = item_score / max(item_score.max(), 1) + rng.uniform(0, 1e-6, len(item_score))  # random tie-break
        scores = torch.tensor(item_score, dtype=torch.float64)[None].repeat(len(users), 1)
        scores[:, 0] = float("-inf")
        target = torch.tensor([split.log.item[split.target(int(u), "test")] for u in users])
        seen = [split.log.item[split.history(int(u), "test")] for u in users]
        out["genre_popularity"] = ranking_metrics(rank_targets(scores, target, seen, cold_t).numpy(), ks)
    out["fm_content_only"]["users"] = float(len(users))
    return out
