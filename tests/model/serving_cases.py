"""Shared by the served-model tests (in-process here, on the real Triton server in tests/integration):
requests built from a user's raw history, and the evaluation path's top-k to compare with."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fmrec.data.schema import EventLog, IntArray
from fmrec.data.split import LeaveOneOut
from fmrec.nn.adapters import AdaptedModel
from fmrec.nn.fm import FoundationModel
from fmrec.serving.request import Query
from fmrec.eval.evaluate import ranked_scores

TIE = 1e-6  # scores this close are a tie that float rounding in another batch may order either way (seen: 4e-7)
SAME = 1e-5  # served scores of one request in two different batches differ by float rounding only


def with_device(log: EventLog, seed: int = 0) -> EventLog:
    """The log with a `device` context field (phone / tv / web), as a Parquet source would bring it."""
    device = np.random.default_rng(seed).integers(1, 4, len(log)).astype(np.int64)
    return dataclasses.replace(log, context={"device": device}, context_ids={"device": ("phone", "tv", "web")})


def raw_history(split: LeaveOneOut, user: int, stage: str = "test") -> dict[str, list[str] | IntArray]:
    """A user's events before the `stage` target as a client has them: raw IDs and values, oldest first."""
    log, rows = split.log, split.history(user, stage)
    out: dict[str, list[str] | IntArray] = {
        "items": [log.item_ids[c - 1] for c in log.item[rows]],
        "actions": [log.action_ids[c - 1] for c in log.action[rows]],
        "timestamps": log.timestamp[rows].copy(),
    }
    for name, codes in log.context.items():
        out[name] = [log.context_ids[name][c - 1] for c in codes[rows]]
    return out


def query(split: LeaveOneOut, user: int, task: str = "", k: int = 0, shuffle: int | None = None) -> Query:
    """The request for a user's whole history before the test target; `shuffle` sends the events in a random order."""
    h = raw_history(split, user)
    n = len(h["items"])
    order = np.random.default_rng(shuffle).permutation(n) if shuffle is not None else np.arange(n)
    pick = [[v[i] for i in order] for v in (h["items"], h["actions"])]
    context = {name: [h[name][i] for i in order] for name in split.log.context}  # type: ignore[index]
    return Query(items=pick[0], actions=pick[1], timestamps=np.asarray(h["timestamps"])[order], context=context,  # type: ignore[arg-type]
                 task=task, k=k)


def evaluated_scores(model: FoundationModel | AdaptedModel, split: LeaveOneOut, users: IntArray) -> torch.Tensor:
    """evaluate()'s scores for these users (B, N): seen items at -inf, exactly what it ranks the target in."""
    return torch.cat([scores for _, scores in ranked_scores(model, split, users, "test")])


def assert_same_ranking(got: IntArray, want_scores: torch.Tensor, user: object, got_scores: list[float] | None = None) -> None:
    """`got` (K,) item codes must be evaluation's top-K for this row of scores (N,), in order, and
    `got_scores` (when given) their evaluated scores.

    Only items whose evaluated scores tie within TIE may swap places (float rounding in a
    different batch may order a tie either way); every other difference fails."""
    k = len(got)
    want = torch.topk(want_scores, k)
    if got_scores is not None:
        evaluated = want_scores[torch.from_numpy(got)]
        assert torch.allclose(torch.tensor(got_scores), evaluated, atol=10 * TIE, rtol=0), (
            f"user {user}: served scores {got_scores} differ from the evaluated {evaluated.tolist()}")
    if np.array_equal(got, want.indices.numpy()):
        return
    got_scores = want_scores[torch.from_numpy(got)]
    assert torch.allclose(got_scores, want.values, atol=TIE, rtol=0), (
        f"user {user}: served top-{k} {got.tolist()} differs from evaluation's {want.indices.tolist()} "
        f"beyond float ties (evaluated scores of the served items {got_scores.tolist()} vs {want.values.tolist()})")


def assert_same_answer(got: tuple[list[str], list[float]], alone: tuple[list[str], list[float]], who: object) -> None:
    """One request's (items, scores) answered inside a batch equal its answer alone: the same scores
    within SAME, and the same items except where neighbouring scores tie (float rounding in a batch
    of another size may order a tie either way)."""
    (items, scores), (want_items, want_scores) = got, alone
    assert len(items) == len(want_items) and np.allclose(scores, want_scores, atol=SAME, rtol=0), (
        f"{who}: scores in the batch {scores} differ from alone {want_scores}")
    for i, (g, w) in enumerate(zip(items, want_items, strict=True)):
        tied = any(abs(want_scores[i] - want_scores[j]) <= SAME for j in (i - 1, i + 1) if 0 <= j < len(want_scores))
        assert g == w or tied or i == len(items) - 1, f"{who}: item {i} is {g!r} in the batch, {w!r} alone: {items} vs {want_items}"
