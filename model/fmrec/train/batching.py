"""Windows of log rows -> batches of tensors: training batches (inputs and next-event targets) and
scoring inputs (each user's newest events before a held-out one)."""

from __future__ import annotations

import numpy as np
import torch

from fmrec.data.schema import IntArray
from fmrec.data.split import LeaveOneOut
from fmrec.tokens import Tokens


def batch_tensors(tok: Tokens, rows: list[IntArray], T: int, H: int, fields: tuple[str, ...],
                  device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Left-padded inputs (B, T') and targets: next H items (B, T', H) and next action (B, T').

    T' is the longest window in the batch (at most T): padding costs compute, and positions
    are counted from the newest event, so trimming changes nothing else."""
    B = len(rows)
    T = min(T, max(len(w) - 1 for w in rows))
    idx = np.full((B, T), -1, dtype=np.int64)
    tgt = np.full((B, T, H), -1, dtype=np.int64)
    for b, w in enumerate(rows):
        n = len(w) - 1  # inputs
        idx[b, T - n:] = w[:-1]
        for j in range(H):
            k = n - j  # positions with a target j+1 steps ahead
            if k > 0:
                tgt[b, T - n:T - n + k, j] = w[1 + j:1 + j + k]
    inputs = {f: torch.from_numpy(np.where(idx >= 0, tok[f][idx], 0)).to(device) for f in fields}
    targets = {
        "item": torch.from_numpy(np.where(tgt >= 0, tok["item"][tgt], 0)).to(device),
        "action": torch.from_numpy(np.where(tgt[..., 0] >= 0, tok["action"][tgt[..., 0]], 0)).to(device),
    }
    return inputs, targets


def length_buckets(wins: list[IntArray], batch_size: int, rng: np.random.Generator, pool: int = 32) -> list[list[IntArray]]:
    """Shuffled batches of windows of similar length (less padding), in random order."""
    order = rng.permutation(len(wins))
    batches: list[list[IntArray]] = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start:start + batch_size * pool], key=lambda i: len(wins[i]))
        batches += [[wins[i] for i in chunk[b:b + batch_size]] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def shuffled_batches(wins: list[IntArray], batch_size: int, rng: np.random.Generator) -> list[list[IntArray]]:
    """Batches of windows in plain random order."""
    order = rng.permutation(len(wins))
    return [[wins[i] for i in order[start:start + batch_size]] for start in range(0, len(wins), batch_size)]


def history_index(split: LeaveOneOut, users: IntArray, stage: str, T: int) -> IntArray:
    """(B, T) log rows of each user's newest T events before the `stage` target, left-padded with -1."""
    idx: IntArray = np.full((len(users), T), -1, dtype=np.int64)
    for b, u in enumerate(users):
        r = split.history(int(u), stage)[-T:]
        if len(r):
            idx[b, T - len(r):] = r
    return idx


def history_tensors(tok: Tokens, split: LeaveOneOut, users: IntArray, stage: str, T: int, fields: tuple[str, ...],
                    device: torch.device) -> dict[str, torch.Tensor]:
    idx = history_index(split, users, stage, T)
    return {f: torch.from_numpy(np.where(idx >= 0, tok[f][idx], 0)).to(device) for f in fields}
