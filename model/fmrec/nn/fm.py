"""The foundation model: multi-field event tokens -> causal transformer -> task heads.

Shapes: B batch, T context length, C model width, N items (+1 for padding code 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class FMConfig:
    n_items: int
    vocab: dict[str, int]  # embedding size per event field (codes + padding)
    event_fields: tuple[str, ...] = ("item", "action", "timeGap")
    n_genres: int = 0
    n_year_buckets: int = 0
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    context_len: int = 50
    dropout: float = 0.1
    item_id_dropout: float = 0.1
    attention_window: int | None = None  # sliding-window attention when set
    objectives: dict[str, float] = field(default_factory=lambda: {"nextItem": 1.0})
    horizon: int = 1  # multiToken: predict items t+1..t+horizon
    negatives: int = 0  # > 0: sampled softmax with this many uniform negatives

    def __post_init__(self) -> None:
        assert self.d_model % self.n_heads == 0, f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}"
        assert "item" in self.event_fields, "event_fields must include item"
        assert "nextItem" in self.objectives, "objectives must include nextItem"
        missing = [f for f in self.event_fields if f != "item" and f not in self.vocab]
        assert not missing, f"event fields {missing} have no vocabulary in the data"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FMConfig:
        d = dict(d)
        d["event_fields"] = tuple(d["event_fields"])
        return cls(**d)


RELATIVE_TIME = "relativeTime"  # an event field that is not embedded: its timestamps bias attention (TimeBias)


def embedded_fields(fields: tuple[str, ...]) -> list[str]:
    """The event fields that get an embedding table of their own (not item, not relativeTime)."""
    return [f for f in fields if f not in ("item", RELATIVE_TIME)]


class TimeBias(nn.Module):
    """HSTU-style relative time: a learned bias per head for each log2 bucket of the seconds between
    a query event and an earlier event (the buckets of tokens.gap_to_bucket), added to attention.

    Events of one burst (the same second) and events weeks apart can then be weighed differently,
    which positions alone cannot tell apart."""

    def __init__(self, buckets: int, heads: int) -> None:
        super().__init__()
        self.table = nn.Embedding(buckets, heads)

    def forward(self, times: Tensor, mask: Tensor) -> Tensor:
        """times (B, T) seconds; mask (B, 1, T, T) bool -> float mask (B, H, T, T) with -inf where mask is False."""
        dt = (times[:, :, None] - times[:, None, :]).clamp(min=0)  # (B, T, T): query i minus key j
        log2 = torch.floor(torch.log2(dt.clamp(min=1).double())).long()
        bucket = torch.where(dt > 0, 2 + log2, torch.ones_like(dt)).clamp(max=self.table.num_embeddings - 1)
        bias = self.table(bucket).permute(0, 3, 1, 2)  # (B, H, T, T)
        return bias.masked_fill(~mask, float("-inf"))


class ItemEncoder(nn.Module):
    """Item vector = learned ID embedding + content embedding (genres, release-year bucket).

    The content part lets an item nobody has interacted with yet be embedded (and scored)."""

    def __init__(self, cfg: FMConfig, genres: Tensor | None, year: Tensor | None) -> None:
        super().__init__()
        c = cfg.d_model
        self.ids = nn.Embedding(cfg.n_items + 1, c, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=0.02)
        self.genre_proj = nn.Linear(cfg.n_genres, c, bias=False) if cfg.n_genres else None
        self.year = nn.Embedding(cfg.n_year_buckets + 1, c, padding_idx=0) if cfg.n_year_buckets else None
        self.register_buffer("genres", genres.float() if genres is not None else torch.zeros(cfg.n_items + 1, 0), persistent=True)
        self.register_buffer("year_bucket", year.long() if year is not None else torch.zeros(cfg.n_items + 1, dtype=torch.long), persistent=True)

    def content(self, items: Tensor) -> Tensor:
        out = torch.zeros(*items.shape, self.ids.embedding_dim, device=items.device)
        if self.genre_proj is not None:
            g = self.genres[items]  # (..., G)
            out = out + self.genre_proj(g / g.sum(-1, keepdim=True).clamp(min=1))
        if self.year is not None:
            out = out + self.year(self.year_bucket[items].long())  # int16 in an int8 export
        return out

    def forward(self, items: Tensor, id_keep: Tensor | None = None) -> Tensor:
        ids = self.ids(items)
        if id_keep is not None:
            ids = ids * id_keep.unsqueeze(-1)
        return ids + self.content(items)


class LinearDeltas(Protocol):
    """Extra outputs added to a block's Linear layers without changing their weights (LoRA,
    fmrec.nn.adapters): target "qkv" (the fused q/k/v projection) or "proj" (the attention output)."""

    def delta(self, layer: int, target: str, x: Tensor) -> Tensor: ...


class Block(nn.Module):
    def __init__(self, cfg: FMConfig) -> None:
        super().__init__()
        c = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)
        self.p = cfg.dropout

    def forward(self, x: Tensor, mask: Tensor, deltas: LinearDeltas | None = None, layer: int = 0) -> Tensor:
        """deltas: added to the q/k/v and output projections of this block (its index `layer`); the weights stay as they are."""
        B, T, C = x.shape
        a = self.ln1(x)
        qkv = self.qkv(a)  # (B, T, 3C)
        if deltas is not None:
            qkv = qkv + deltas.delta(layer, "qkv", a)
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, C/H)
        if mask.is_floating_point() and mask.dtype != q.dtype:  # a TimeBias mask under bf16 autocast
            mask = mask.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        out = self.proj(y)
        if deltas is not None:
            out = out + deltas.delta(layer, "proj", y)
        x = x + self.drop(out)
        return x + self.mlp(self.ln2(x))


def causal_mask(items: Tensor, window: int | None = None) -> Tensor:
    """(B, 1, T, T) attention mask: each position sees itself and earlier real events (within `window` when set)."""
    T = items.shape[1]
    i = torch.arange(T, device=items.device)
    causal = i[None, :] <= i[:, None]  # (T, T): query row attends to keys at or before it
    if window:
        causal = causal & (i[:, None] - i[None, :] < window)
    keys = items != 0  # (B, T)
    mask = causal[None, None] & keys[:, None, None, :]  # (B, 1, T, T)
    return mask | torch.eye(T, dtype=torch.bool, device=items.device)  # padding rows see themselves: no NaN


class FoundationModel(nn.Module):
    def __init__(self, cfg: FMConfig, genres: Tensor | None = None, year: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.d_model
        self.items = ItemEncoder(cfg, genres, year)
        self.fields = nn.ModuleDict({f: nn.Embedding(cfg.vocab[f], c, padding_idx=0) for f in embedded_fields(cfg.event_fields)})
        self.time_bias = TimeBias(cfg.vocab[RELATIVE_TIME], cfg.n_heads) if RELATIVE_TIME in cfg.event_fields else None
        self.pos = nn.Embedding(cfg.context_len, c)
        self.ln_in = nn.LayerNorm(c)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(c)
        h = cfg.horizon if "multiToken" in cfg.objectives else 1
        self.future = nn.ModuleList(nn.Linear(c, c) for _ in range(h - 1))  # user state -> item space for t+2..t+h
        self.action_head = nn.Linear(c, cfg.vocab["action"]) if "action" in cfg.objectives else None
        self.genre_head = nn.Linear(c, cfg.n_genres) if "genre" in cfg.objectives and cfg.n_genres else None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _mask(self, items: Tensor) -> Tensor:
        return causal_mask(items, self.cfg.attention_window)

    def forward(self, tokens: dict[str, Tensor], cold: Tensor | None = None, deltas: LinearDeltas | None = None) -> Tensor:
        """User states at every position. tokens: field -> (B, T) codes, left-padded with 0.

        cold: item codes whose ID embedding is not trusted (never trained); content only.
        deltas: low-rank updates of the blocks' projections (a LoRA adapter); the FM's weights are not changed."""
        items = tokens["item"]
        B, T = items.shape
        assert T <= self.cfg.context_len, f"sequence length {T} exceeds context_len {self.cfg.context_len}"
        keep = None
        if cold is not None:
            keep = (~torch.isin(items, cold)).float()
        elif self.training and self.cfg.item_id_dropout > 0:
            keep = (torch.rand(B, T, device=items.device) >= self.cfg.item_id_dropout).float()
        x = self.items(items, keep)  # (B, T, C)
        for name, emb in self.fields.items():
            x = x + emb(tokens[name])
        pos = torch.arange(T - 1, -1, -1, device=items.device)  # counted from the newest event
        x = self.drop(self.ln_in(x + self.pos(pos)))
        mask = self._mask(items)
        if self.time_bias is not None:
            mask = self.time_bias(tokens[RELATIVE_TIME], mask)  # (B, H, T, T) float
        for i, block in enumerate(self.blocks):
            x = block(x, mask, deltas, i)
        out: Tensor = self.ln_f(x)
        return out  # (B, T, C)

    def item_table(self, cold: Tensor | None = None) -> Tensor:
        """Output embedding of every item (N, C); rows of `cold` items use content only."""
        all_items = torch.arange(self.cfg.n_items + 1, device=self.pos.weight.device)
        keep = None
        if cold is not None:
            keep = torch.ones(self.cfg.n_items + 1, device=all_items.device)
            keep[cold] = 0.0
        elif self.training and self.cfg.item_id_dropout > 0:
            keep = (torch.rand(self.cfg.n_items + 1, device=all_items.device) >= self.cfg.item_id_dropout).float()
        return self.items(all_items, keep)

    def loss(self, tokens: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Multi-task loss. targets['item']: (B, T, H) next H item codes (0 = none)."""
        h = self(tokens)  # (B, T, C)
        table = self.item_table()  # (N, C)
        weights = self.cfg.objectives
        parts: dict[str, Tensor] = {}
        parts["nextItem"] = self._item_loss(h, table, targets["item"][..., 0])
        for j, proj in enumerate(self.future, start=1):
            parts[f"multiToken@{j + 1}"] = self._item_loss(proj(h), table, targets["item"][..., j]) / len(self.future)
        if self.action_head is not None:
            t = targets["action"]
            parts["action"] = F.cross_entropy(self.action_head(h)[t > 0], t[t > 0]) if (t > 0).any() else h.sum() * 0
        if self.genre_head is not None:
            nxt = targets["item"][..., 0]
            sel = nxt > 0
            parts["genre"] = F.binary_cross_entropy_with_logits(self.genre_head(h)[sel], self.items.genres[nxt[sel]])
        total = sum(self._weight(name, weights) * v for name, v in parts.items())
        assert isinstance(total, Tensor)
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @staticmethod
    def _weight(name: str, weights: dict[str, float]) -> float:
        return weights.get(name.split("@")[0], 0.0)

    def _item_loss(self, h: Tensor, table: Tensor, target: Tensor) -> Tensor:
        sel = target > 0
        if not sel.any():
            return h.sum() * 0
        hs, ts = h[sel], target[sel]  # (M, C), (M,)
        if self.cfg.negatives > 0:
            neg = torch.randint(1, self.cfg.n_items + 1, (self.cfg.negatives,), device=h.device)
            cand = torch.cat([ts, neg])  # in-batch positives double as negatives
            logits = hs @ table[cand].T  # (M, M + K)
            logits = logits.masked_fill(cand[None, :] == ts[:, None], float("-inf"))
            logits = torch.cat([(hs * table[ts]).sum(-1, keepdim=True), logits], dim=1)
            return F.cross_entropy(logits, torch.zeros(len(ts), dtype=torch.long, device=h.device))
        logits = hs @ table.T  # (M, N)
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, ts)

    @torch.no_grad()
    def score_next(self, tokens: dict[str, Tensor], cold: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores of every item as the next event (B, N) and the user embedding (B, C)."""
        user = self(tokens, cold)[:, -1]  # newest position (sequences are left-padded)
        scores = user @ self.item_table(cold).T
        scores[:, 0] = float("-inf")
        return scores, user


def init_weights(model: nn.Module) -> None:
    """GPT-2 style: every matrix and embedding N(0, 0.02), so no field (e.g. position) drowns the item signal."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, std=0.02)
        if name.endswith("proj.weight") and "genre" not in name:
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * len(getattr(model, "blocks", [1]))))
