"""Full-ranking evaluation of a trained model (an FM, or an FM with an adapter) on a leave-one-out split."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch

from fmrec.data.schema import IntArray
from fmrec.data.split import LeaveOneOut
from fmrec.eval.metrics import mask_seen, rank_of, ranking_metrics
from fmrec.nn.adapters import AdaptedModel
from fmrec.nn.fm import FoundationModel
from fmrec.tokens import tokenize
from fmrec.train.batching import history_tensors


@torch.no_grad()
def ranked_scores(model: FoundationModel | AdaptedModel, split: LeaveOneOut, users: IntArray, stage: str = "test",
                  batch_size: int = 256, cold: torch.Tensor | None = None,
                  candidates: torch.Tensor | None = None) -> Iterator[tuple[IntArray, torch.Tensor]]:
    """What evaluation ranks, batch by batch: (users (B,), scores (B, N)) where every item in the
    user's whole history before the `stage` target (and every non-candidate) scores -inf.

    Input per user: the newest context_len events before the target, left-padded; each event's
    fields as tokenize() gives them over the whole log (so the oldest event in the window keeps
    its real time gap). The served model must rank exactly like this; its tests compare with it."""
    model.eval()
    device = next(model.parameters()).device
    tok = tokenize(split.log)
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        inputs = history_tensors(tok, split, chunk, stage, model.cfg.context_len, model.cfg.event_fields, device)
        scores, _ = model.score_next(inputs, cold)  # (B, N)
        yield chunk, mask_seen(scores, [split.log.item[split.history(int(u), stage)] for u in chunk], candidates)


@torch.no_grad()
def evaluate(model: FoundationModel | AdaptedModel, split: LeaveOneOut, stage: str = "test", ks: tuple[int, ...] = (10, 20, 50),
             batch_size: int = 256, users: IntArray | None = None, cold: torch.Tensor | None = None,
             candidates: torch.Tensor | None = None) -> dict[str, float]:
    """Full ranking over all items, items the user already saw filtered; HR@k and NDCG@k."""
    return ranking_metrics(target_ranks(model, split, stage, users, batch_size, cold, candidates), ks)


@torch.no_grad()
def target_ranks(model: FoundationModel | AdaptedModel, split: LeaveOneOut, stage: str = "test", users: IntArray | None = None,
                 batch_size: int = 256, cold: torch.Tensor | None = None, candidates: torch.Tensor | None = None) -> npt.NDArray[np.int64]:
    """What evaluate() scores, per user: the 0-based rank of each user's `stage` target."""
    users = split.test_users if users is None else users
    ranks: list[npt.NDArray[np.int64]] = []
    for chunk, scores in ranked_scores(model, split, users, stage, batch_size, cold, candidates):
        target = torch.tensor([split.log.item[split.target(int(u), stage)] for u in chunk], device=scores.device)
        ranks.append(rank_of(scores, target).cpu().numpy())
    return np.concatenate(ranks)


@torch.no_grad()
def top_score_deciles(model: FoundationModel | AdaptedModel, split: LeaveOneOut, stage: str = "test",
                      users: IntArray | None = None) -> list[float]:
    """The 10%..90% points of each evaluated user's top-1 score (seen items filtered): the served
    model's top-score histogram buckets, so offline each bucket holds a tenth of the users."""
    users = split.test_users if users is None else users
    top = torch.cat([scores.max(1).values for _, scores in ranked_scores(model, split, users, stage)])  # (U,)
    return [float(q) for q in torch.quantile(top, torch.linspace(0.1, 0.9, 9))]
