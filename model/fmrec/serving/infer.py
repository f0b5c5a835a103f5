"""The served model: one FM backbone, any number of task adapters, raw IDs in and out.

A batch of requests runs the plain backbone once for the rows of the FM and of head/bottleneck
adapters (they transform its final state); each LoRA task present runs the backbone with its own
low-rank updates on its own rows, and each distilled task runs its student on its own rows. So
one batch can mix tasks and every row gets its own task's ranking. Scores are computed exactly as
FoundationModel.score_next / AdaptedModel.score_next compute them and ranked exactly as
evaluation ranks them (fmrec.eval.evaluate.ranked_scores): items of the history are never returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fmrec.data.schema import IntArray
from fmrec.nn.adapters import AdapterBase
from fmrec.nn.fm import FoundationModel
from fmrec.serving.quant import FP16, INT8_GROUPS, INT8_ROWS, is_int8, quantize_model
from fmrec.serving.request import Encoded, Query, RequestError, encode
from fmrec.vocab import Vocabulary

FM_TASK = "fm"  # the task name that asks for the foundation model itself (also what an empty TASK means)


def fm_storage(name: str, module: torch.nn.Module) -> str:
    """The FM's quantisation policy (why: fmrec.serving.quant): the item ID table int8 with a scale
    per 16 columns, the transformer blocks int8 with a scale per row, the small input tables
    (positions, event fields, release year, genre projection) and any head fp16."""
    if name == "items.ids":
        return INT8_GROUPS
    if name.startswith("blocks."):
        return INT8_ROWS
    return FP16


def quantize_int8(model: FoundationModel) -> FoundationModel:
    """A copy of the FM with compressed weights (fm_storage says which layer gets what); an FM that
    is already int8 is returned as it is."""
    if is_int8(model):
        return model
    quantized = quantize_model(model, fm_storage)
    assert isinstance(quantized, FoundationModel)
    genres = quantized.items.genres  # (N+1, G) multi-hot 0/1: exact in uint8, a quarter of the bytes
    assert isinstance(genres, torch.Tensor)
    if genres.numel() and bool(torch.logical_or(genres == 0, genres == 1).all()):
        quantized.items.genres = genres.to(torch.uint8)
    year = quantized.items.year_bucket  # (N+1,) small bucket numbers: int16 instead of int64
    assert isinstance(year, torch.Tensor)
    if year.numel() and int(year.max()) < 2 ** 15 and int(year.min()) >= 0:
        quantized.items.year_bucket = year.to(torch.int16)
    return quantized


@dataclass(frozen=True)
class Prepared:
    """A validated request row, ready to batch."""

    encoded: Encoded
    task: str
    k: int


@dataclass(frozen=True)
class Recommendation:
    items: npt.NDArray[np.object_]  # (K,) raw item IDs, best first ("" where fewer than K items are left)
    codes: IntArray  # (K,) their item codes (0 where "")
    scores: npt.NDArray[np.float32]  # (K,) -inf where ""
    user: npt.NDArray[np.float32]  # (C,) the state the items were scored against
    task: str
    events: int
    unknown: dict[str, int]


class Recommender:
    def __init__(self, fm: FoundationModel, vocab: Vocabulary, adapters: dict[str, AdapterBase] | None = None,
                 k_max: int = 100, int8: bool = False) -> None:
        adapters = adapters or {}
        assert FM_TASK not in adapters, f"an adapter cannot be named {FM_TASK!r}: that task name means the FM itself"
        assert 1 <= k_max <= fm.cfg.n_items, f"k_max {k_max} must be between 1 and the {fm.cfg.n_items} items"
        fm = fm.eval()
        self.fm = quantize_int8(fm) if int8 else fm  # an int8 checkpoint is served as int8 either way
        self.adapters = {name: a.eval() for name, a in adapters.items()}
        self.vocab, self.k_max, self.cfg = vocab, k_max, fm.cfg
        with torch.no_grad():
            self.table = self.fm.item_table()  # (N, C), what score_next multiplies with

    @property
    def tasks(self) -> tuple[str, ...]:
        return (FM_TASK, *self.adapters)

    def prepare(self, q: Query) -> Prepared:
        """Validate and encode one request row; RequestError says what to fix."""
        task = q.task or FM_TASK
        if task not in self.tasks:
            raise RequestError(f"unknown TASK {task!r}: this model serves {list(self.tasks)}", "TASK")
        k = q.k or self.k_max
        if not 1 <= k <= self.k_max:
            raise RequestError(f"K={k} is outside 1..{self.k_max}, the most this model was exported to return; "
                               "ask for fewer or re-export with a larger --top-k", "K")
        return Prepared(encode(q, self.vocab, self.cfg.event_fields, self.cfg.context_len), task, k)

    @torch.no_grad()
    def run(self, rows: list[Prepared]) -> list[Recommendation]:
        """One plain backbone pass over the rows that share it, one pass per LoRA or distilled task on its rows."""
        if not rows:
            return []
        tokens = {f: torch.from_numpy(np.stack([r.encoded.tokens[f] for r in rows])) for f in self.cfg.event_fields}  # (B, T)
        tasks = np.array([r.task for r in rows])
        shares = {str(t): t == FM_TASK or self.adapters[str(t)].uses_backbone for t in np.unique(tasks)}  # task -> on the plain pass
        plain = np.flatnonzero([shares[str(t)] for t in tasks])  # rows of the shared pass, in order
        h = self.fm({f: v[torch.from_numpy(plain)] for f, v in tokens.items()})[:, -1] if len(plain) else None  # (B', C) newest position
        users = torch.empty(len(rows), self.cfg.d_model)
        scores = torch.empty(len(rows), self.table.shape[0])  # (B, N)
        for task, shared in shares.items():
            mine = np.flatnonzero(tasks == task)
            idx = torch.from_numpy(mine)
            if shared:
                assert h is not None
                u, s = self._head(task, h[torch.from_numpy(np.searchsorted(plain, mine))])
            else:
                u, s = self._own_pass(task, {f: v[idx] for f, v in tokens.items()})
            users[idx], scores[idx] = u, s
        scores[:, 0] = float("-inf")  # padding is no item
        for b, r in enumerate(rows):
            scores[b, torch.from_numpy(r.encoded.blocked)] = float("-inf")
        top = torch.topk(scores, max(r.k for r in rows), dim=1)  # (B, K)
        out = []
        for b, r in enumerate(rows):
            vals = top.values[b, :r.k].numpy().astype(np.float32)
            codes = np.where(np.isfinite(vals), top.indices[b, :r.k].numpy(), 0).astype(np.int64)
            out.append(Recommendation(items=self.vocab.decode_items(codes), codes=codes, scores=vals, user=users[b].numpy(),
                                      task=r.task, events=r.encoded.events, unknown=r.encoded.unknown))
        return out

    def _head(self, task: str, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user state (b, C), scores (b, N)) as FoundationModel / AdaptedModel.score_next compute them."""
        if task == FM_TASK:
            return h, h @ self.table.T
        adapter = self.adapters[task]
        u = adapter(h)  # (b, C)
        return u, u @ self.table.T + adapter.item_bias

    def _own_pass(self, task: str, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(user state (b, C), scores (b, N)) of a LoRA or distilled task: its own pass over its own rows, as AdaptedModel.score_next."""
        adapter = self.adapters[task]
        u = adapter.states(self.fm, tokens, self.table)[:, -1]  # (b, C)
        return u, u @ self.table.T + adapter.item_bias

    def recommend(self, queries: list[Query]) -> list[Recommendation]:
        """prepare + run for callers outside Triton (tests, benchmarks, notebooks)."""
        return self.run([self.prepare(q) for q in queries])
