"""Top-k scoring from raw request arrays: the one code path both offline checks and Triton use."""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
import torch

from fmrec.nn.fm import FoundationModel
from fmrec.tokens import gap_to_bucket

Int = npt.NDArray[np.int64]


def request_gaps(items: Int, timestamps: Int) -> Int:
    """Time-gap buckets for left-padded histories (same buckets as fmrec.tokens.gap_buckets).

    A request carries only the newest events, so its oldest event has no previous one and gets
    bucket 1; in training that event would see its real gap. The skew touches one position of
    the window; send one extra older event if it matters."""
    gap = np.diff(timestamps, axis=1, prepend=timestamps[:, :1])
    first = np.ones_like(items, dtype=bool)
    first[:, 1:] = items[:, :-1] == 0  # the first real event follows padding
    gap[first] = 0
    out: Int = np.where(items > 0, gap_to_bucket(gap), 0).astype(np.int64)
    return out


def quantize_int8(model: FoundationModel) -> FoundationModel:
    """Dynamic int8 quantisation of the Linear layers (weights int8, activations quantised per batch).

    torch.ao.quantization is deprecated in favour of torchao; it still ships with torch and needs
    no extra dependency, so its deprecation warning is silenced here, deliberately and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*")
        quantized: FoundationModel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return quantized


class Scorer:
    def __init__(self, model: FoundationModel, k: int = 100, int8: bool = False) -> None:
        model = model.eval()
        if int8:
            model = quantize_int8(model)
        self.model, self.k = model, k
        self.fields = model.cfg.event_fields

    @torch.no_grad()
    def topk(self, items: Int, actions: Int, timestamps: Int) -> tuple[Int, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        tokens = {"item": torch.from_numpy(items.astype(np.int64)), "action": torch.from_numpy(actions.astype(np.int64)),
                  "timeGap": torch.from_numpy(request_gaps(items, timestamps))}
        for name in ("hourOfDay", "dayOfWeek"):
            if name in self.fields:
                raise NotImplementedError(f"serving does not compute {name} yet; export a model without it")
        with warnings.catch_warnings():  # quantised kernels warn about their own deprecation
            warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*")
            scores, user = self.model.score_next({f: tokens[f] for f in self.fields})
        seen = torch.from_numpy(items.astype(np.int64))
        scores.scatter_(1, seen, float("-inf"))  # never recommend what the user already has (padding 0 too)
        top = torch.topk(scores, self.k, dim=1)
        return top.indices.numpy().astype(np.int64), top.values.numpy().astype(np.float32), user.numpy().astype(np.float32)
