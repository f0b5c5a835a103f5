"""Task adapters: small modules trained on a frozen FoundationModel for one task or user slice.

- head: a per-item bias and a linear map of the user state (the smallest possible adapter)
- bottleneck: LayerNorm -> down (C->r) -> GELU -> up (r->C), residual, plus the per-item bias

`up` starts at zero, so an untrained adapter scores exactly like the frozen FM.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmrec.nn.fm import FoundationModel


class Adapter(nn.Module):
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

    def forward(self, h: Tensor) -> Tensor:
        """Adapted user state (..., C)."""
        if self.kind == "bottleneck":
            return h + self.up(torch.nn.functional.gelu(self.down(self.ln(h))))
        return h + self.up(h)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class AdaptedModel(nn.Module):
    """A frozen FoundationModel with one adapter on top; scores like FoundationModel.score_next."""

    def __init__(self, fm: FoundationModel, adapter: Adapter) -> None:
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
            h = self.fm(tokens)  # (B, T, C)
            table = self.fm.item_table()  # (N, C)
        out = self.adapter(h) @ table.T + self.adapter.item_bias  # (B, T, N)
        out[..., 0] = float("-inf")
        return out

    @torch.no_grad()
    def score_next(self, tokens: dict[str, Tensor], cold: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.adapter(self.fm(tokens)[:, -1])
        scores = h @ self.fm.item_table(cold).T + self.adapter.item_bias
        scores[:, 0] = float("-inf")
        return scores, h
