"""int8 weights for serving: every Linear and Embedding stored as int8 rows with one fp32 scale per row.

Symmetric per-row quantisation: row r of a weight W (an embedding row, or a Linear's output
channel) is stored as q[r] = round(W[r] / s[r]) in int8 with s[r] = max|W[r]| / 127, so
|W - q * s| <= s / 2 element-wise. Weights are dequantised on the fly (q.float() * s), which is
exact in fp32, so the offline int8 model and the served one compute the same numbers.

The item ID embedding (and with it the output table, which is built from it) is most of the
model, so quantising it is what makes the artifact small; LayerNorms, biases and the per-row
scales stay fp32. No torch.ao (deprecated) and no extra dependency.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "int8-rows/v1"  # recorded in the checkpoint of an int8 model


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """(q int8 (R, C), scale fp32 (R,)) with w ~= q * scale[:, None]; an all-zero row gets scale 1."""
    assert w.dim() == 2, f"per-row quantisation needs a 2-D weight, got shape {tuple(w.shape)}"
    amax = w.detach().abs().amax(dim=1).float()  # (R,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale[:, None]  # (R, C)


class Int8Linear(nn.Module):
    """y = x @ (q * s).T + b with q int8 per output channel."""

    weight_q: Tensor
    scale: Tensor
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, m: nn.Linear) -> Int8Linear:
        out = cls(m.in_features, m.out_features, m.bias is not None)
        out.weight_q, out.scale = quantize_rows(m.weight)
        if m.bias is not None:
            out.bias = m.bias.detach().float().clone()
        return out

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, dequantize_rows(self.weight_q, self.scale), self.bias)


class Int8Embedding(nn.Module):
    """Row lookup of int8 rows times their scales (the padding row quantises to zeros)."""

    weight_q: Tensor
    scale: Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_q", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, m: nn.Embedding) -> Int8Embedding:
        out = cls(m.num_embeddings, m.embedding_dim)
        out.weight_q, out.scale = quantize_rows(m.weight)
        return out

    @property
    def weight(self) -> Tensor:
        """The dequantised table (N, C), for code that reads .weight (device, shape)."""
        return dequantize_rows(self.weight_q, self.scale)

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.weight_q).float() * self.scale[idx].unsqueeze(-1)  # (..., C)


def _swap(module: nn.Module, from_float: bool) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            new: nn.Module = (Int8Linear.from_float(child) if from_float
                              else Int8Linear(child.in_features, child.out_features, child.bias is not None))
        elif isinstance(child, nn.Embedding):
            new = Int8Embedding.from_float(child) if from_float else Int8Embedding(child.num_embeddings, child.embedding_dim)
        else:
            _swap(child, from_float)
            continue
        setattr(module, name, new)


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules())


def quantize_model(model: nn.Module) -> nn.Module:
    """A copy of `model` (left unchanged) whose Linear and Embedding layers hold int8 weights, in eval mode."""
    out = copy.deepcopy(model).eval()
    _swap(out, from_float=True)
    return out


def int8_skeleton(model: nn.Module) -> nn.Module:
    """Turn a freshly built float model into the int8 layout in place, ready for an int8 state_dict."""
    _swap(model, from_float=False)
    return model.eval()
