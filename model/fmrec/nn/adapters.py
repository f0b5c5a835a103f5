"""Task adapters: small modules trained on a frozen FoundationModel for one task or user slice.

Every kind turns a request's tokens into user states in the FM's item space, scored against the
FM's item table plus a per-item bias of its own (AdaptedModel):

- head: a linear map of the FM's final user state (the smallest possible adapter)
- bottleneck: LayerNorm -> down (C->r) -> GELU -> up (r->C) of the final state, residual
- lora: low-rank updates (alpha/r) B A of every block's attention projections (q, k, v and the
  output projection), added in the FM's forward; the FM's weights are never changed, so one
  loaded FM serves any number of LoRA adapters (and the plain FM) side by side
- distilled: a small student transformer (layers x width) of its own that never runs the FM's
  blocks; it reads the FM's item table (projected to its width) and scores against it, and is
  trained to match the FM's next-item distribution (fmrec.train.finetune)

head, bottleneck and lora start at zero (`up` and LoRA's B are zero-initialised), so an untrained
adapter of those kinds scores exactly like the frozen FM. A student starts untrained.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fmrec.nn.fm import Block, FMConfig, FoundationModel, causal_mask, embedded_fields, init_weights

KINDS = ("head", "bottleneck", "lora", "distilled")


class AdapterBase(nn.Module):
    """What every adapter kind has: a kind, the settings that rebuild it, a per-item bias, and its user states."""

    kind: str
    item_bias: nn.Parameter

    def settings(self) -> dict[str, Any]:
        """Constructor arguments besides the FM (saved with the weights; build_adapter takes them back)."""
        raise NotImplementedError

    def states(self, fm: FoundationModel, tokens: dict[str, Tensor], table: Tensor) -> Tensor:
        """Adapted user states (B, T, C) to score against `table`, the FM's item table (N, C).

        Gradients flow into the adapter's parameters only; the FM's are frozen."""
        raise NotImplementedError

    @property
    def uses_backbone(self) -> bool:
        """True when the states are a function of the plain FM's final states (one shared backbone pass serves it)."""
        return False

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Adapter(AdapterBase):
    """head or bottleneck: a transform of the FM's final user state h."""

    def __init__(self, fm: FoundationModel, kind: str = "bottleneck", dim: int = 16) -> None:
        super().__init__()
        assert kind in ("head", "bottleneck"), f"adapter kind must be head or bottleneck, got {kind!r}"
        c = fm.cfg.d_model
        self.kind, self.dim = kind, dim
        self.item_bias = nn.Parameter(torch.zeros(fm.cfg.n_items + 1))
        if kind == "bottleneck":
            self.ln = nn.LayerNorm(c)
            self.down = nn.Linear(c, dim)
            self.up = nn.Linear(dim, c)
        else:
            self.up = nn.Linear(c, c)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def settings(self) -> dict[str, Any]:
        return {"dim": self.dim}

    @property
    def uses_backbone(self) -> bool:
        return True

    def forward(self, h: Tensor) -> Tensor:
        """Adapted user state (..., C)."""
        if self.kind == "bottleneck":
            return h + self.up(torch.nn.functional.gelu(self.down(self.ln(h))))
        return h + self.up(h)

    def states(self, fm: FoundationModel, tokens: dict[str, Tensor], table: Tensor) -> Tensor:
        with torch.no_grad():
            h = fm(tokens)  # (B, T, C)
        out: Tensor = self(h)
        return out


class LoRA(AdapterBase):
    """Low-rank updates of the frozen FM's attention projections, layer by layer.

    For each block and each of q, k, v (the three C-wide parts of the fused qkv projection) and the
    output projection: W x + (alpha / rank) B A x with A (rank, C), B (C, rank); B starts at zero.
    Parameters: n_layers * 4 * 2 * rank * C, plus the per-item bias."""

    TARGETS = ("q", "k", "v", "out")

    def __init__(self, fm: FoundationModel, rank: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        assert rank >= 1 and alpha > 0, f"LoRA needs rank >= 1 and alpha > 0, got rank {rank}, alpha {alpha}"
        c, layers = fm.cfg.d_model, fm.cfg.n_layers
        self.kind, self.rank, self.alpha = "lora", rank, float(alpha)
        self.scale = self.alpha / rank
        self.item_bias = nn.Parameter(torch.zeros(fm.cfg.n_items + 1))
        self.a = nn.Parameter(torch.empty(layers, len(self.TARGETS), rank, c))  # (L, 4, r, C)
        self.b = nn.Parameter(torch.zeros(layers, len(self.TARGETS), c, rank))  # (L, 4, C, r)
        bound = 1 / math.sqrt(c)  # nn.Linear's default for a C-wide input, as LoRA's A is usually initialised
        nn.init.uniform_(self.a, -bound, bound)

    def settings(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha}

    def delta(self, layer: int, target: str, x: Tensor) -> Tensor:
        """What block `layer`'s projection `target` ("qkv" or "proj") adds for input x (B, T, C)."""
        if target == "qkv":
            z = torch.einsum("btc,jrc->btjr", x, self.a[layer, :3])  # (B, T, 3, r)
            d = torch.einsum("btjr,jcr->btjc", z, self.b[layer, :3])  # (B, T, 3, C): q, k, v in qkv's order
            return self.scale * d.flatten(2)  # (B, T, 3C)
        assert target == "proj", f"LoRA has no update for {target!r}"
        return self.scale * (x @ self.a[layer, 3].T) @ self.b[layer, 3].T  # (B, T, C)

    def states(self, fm: FoundationModel, tokens: dict[str, Tensor], table: Tensor) -> Tensor:
        out: Tensor = fm(tokens, deltas=self)
        return out


class Distilled(AdapterBase):
    """A student transformer for one task, much smaller than the FM, that never runs the FM's blocks.

    Input per event: the FM's item table row projected to the student's width (C -> W, the table
    itself stays the FM's), plus the student's own embeddings of the other event fields and of the
    position; `layers` pre-LN causal blocks of width W; the newest state projected back to C and
    scored against the FM's item table plus the per-item bias. Tokens are the FM's (same fields,
    codes and context length), so the served model runs it on the same request tensors."""

    def __init__(self, fm: FoundationModel, layers: int = 1, width: int = 32) -> None:
        super().__init__()
        c = fm.cfg.d_model
        heads = next(h for h in (fm.cfg.n_heads, 2, 1) if width % h == 0)
        self.kind, self.layers, self.width = "distilled", layers, width
        self.cfg = FMConfig(n_items=fm.cfg.n_items, vocab=dict(fm.cfg.vocab), event_fields=fm.cfg.event_fields,
                            d_model=width, n_layers=layers, n_heads=heads, context_len=fm.cfg.context_len,
                            dropout=fm.cfg.dropout, item_id_dropout=0.0, attention_window=fm.cfg.attention_window)
        self.item_bias = nn.Parameter(torch.zeros(fm.cfg.n_items + 1))
        self.item_in = nn.Linear(c, width, bias=False)
        self.fields = nn.ModuleDict({f: nn.Embedding(self.cfg.vocab[f], width, padding_idx=0)
                                     for f in embedded_fields(self.cfg.event_fields)})  # no time bias: the student stays small
        self.pos = nn.Embedding(self.cfg.context_len, width)
        self.ln_in = nn.LayerNorm(width)
        self.drop = nn.Dropout(self.cfg.dropout)
        self.blocks = nn.ModuleList(Block(self.cfg) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.out = nn.Linear(width, c)
        init_weights(self)
        nn.init.normal_(self.item_in.weight, std=1 / math.sqrt(c))  # table rows are ~N(0, 0.02): keep the input's scale
        nn.init.zeros_(self.item_bias)

    def settings(self) -> dict[str, Any]:
        return {"layers": self.layers, "width": self.width}

    def states(self, fm: FoundationModel, tokens: dict[str, Tensor], table: Tensor) -> Tensor:
        items = tokens["item"]
        T = items.shape[1]
        assert T <= self.cfg.context_len, f"sequence length {T} exceeds context_len {self.cfg.context_len}"
        x = self.item_in(table[items])  # (B, T, W)
        for name, emb in self.fields.items():
            x = x + emb(tokens[name])
        pos = torch.arange(T - 1, -1, -1, device=items.device)  # counted from the newest event, as the FM counts
        x = self.drop(self.ln_in(x + self.pos(pos)))
        mask = causal_mask(items, self.cfg.attention_window)
        for block in self.blocks:
            x = block(x, mask)
        out: Tensor = self.out(self.ln_f(x))
        return out  # (B, T, C)


def build_adapter(fm: FoundationModel, kind: str, settings: dict[str, Any] | None = None) -> AdapterBase:
    """An untrained adapter of `kind` for `fm`; settings: dim (head, bottleneck), rank and alpha (lora), layers and width (distilled)."""
    s = dict(settings or {})
    if kind in ("head", "bottleneck"):
        return Adapter(fm, kind, int(s.get("dim", 16)))
    if kind == "lora":
        return LoRA(fm, int(s.get("rank", 8)), float(s.get("alpha", 16.0)))
    if kind == "distilled":
        return Distilled(fm, int(s.get("layers", 1)), int(s.get("width", 32)))
    raise ValueError(f"adapter kind {kind!r} is not one of {list(KINDS)}")


class AdaptedModel(nn.Module):
    """A frozen FoundationModel with one adapter on top; scores like FoundationModel.score_next."""

    def __init__(self, fm: FoundationModel, adapter: AdapterBase) -> None:
        super().__init__()
        self.fm, self.adapter = fm, adapter
        for p in self.fm.parameters():
            p.requires_grad_(False)

    @property
    def cfg(self):  # type: ignore[no-untyped-def]
        return self.fm.cfg

    def train(self, mode: bool = True) -> AdaptedModel:
        super().train(mode)
        self.fm.eval()  # frozen: no dropout, no ID dropout
        return self

    def logits(self, tokens: dict[str, Tensor]) -> Tensor:
        with torch.no_grad():
            table = self.fm.item_table()  # (N, C)
        out = self.adapter.states(self.fm, tokens, table) @ table.T + self.adapter.item_bias  # (B, T, N)
        out[..., 0] = float("-inf")
        return out

    @torch.no_grad()
    def score_next(self, tokens: dict[str, Tensor], cold: Tensor | None = None) -> tuple[Tensor, Tensor]:
        table = self.fm.item_table(cold)
        h = self.adapter.states(self.fm, tokens, table)[:, -1]  # (B, C) newest position
        scores = h @ table.T + self.adapter.item_bias
        scores[:, 0] = float("-inf")
        return scores, h
