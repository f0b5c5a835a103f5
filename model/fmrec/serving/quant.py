"""Compressed weights for serving: int8 where the bytes are, fp16 where a little error costs most.

Three storage kinds, chosen per layer by a policy (fmrec.serving.infer.quantize_int8 holds the FM's):
- int8 with groups: group g of row r of a weight W (an embedding row, or a Linear's output channel)
  is stored as q = round(W / s) in int8, with s = max|W[r, g]| / 127 rounded *up* to fp16, so
  |q| <= 127 and |W - q * s| <= s / 2 element-wise. Groups of GROUP columns for the item table (a
  row shorter than GROUP, or one GROUP does not divide, is one group); one group per row for the
  rest ("int8 rows").
- fp16: the weight as it is, in half precision.
- fp32: left alone (LayerNorms and biases are never touched).
Weights are expanded on the fly (q.float() * s, or w.float()), which is exact in fp32, so the
offline model and the served one compute the same numbers.

Why the mix, measured on ML-100K (README, "int8"): the item ID table is most of the model and the
rest of the bytes are the transformer blocks, so those are int8; four scales per item row instead
of one halve the top-10 changes the table alone causes. The small input tables (positions, event
fields, release year, the genre projection) are a few percent of the bytes, but every position's
input goes through them: int8 there changed more top-10 lists than int8 in both blocks together,
so they stay fp16.

Checkpoints record the layout in their state_dict keys (weight_q + scale: int8; weight_h: fp16),
and a layer takes the scale shape it is given, so int8 checkpoints of the earlier per-row layout
(FORMAT_V1: every layer int8 with one fp32 scale per row) still load. No torch.ao (deprecated) and
no extra dependency.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "int8-groups/v2"  # recorded in the checkpoint of an int8 model
FORMAT_V1 = "int8-rows/v1"  # one fp32 scale per row; still read
FORMATS = (FORMAT, FORMAT_V1)
GROUP = 16  # columns per scale in INT8_GROUPS layers
INT8_GROUPS, INT8_ROWS, FP16, FP32 = "int8-groups", "int8-rows", "fp16", "fp32"
Policy = Callable[[str, nn.Module], str]  # (qualified layer name, Linear or Embedding) -> one of the four
ROW = 1 << 30  # a group wider than any row: one scale per row


def _groups(columns: int, group: int) -> int:
    return columns // group if group < columns and columns % group == 0 else 1


def quantize_groups(w: Tensor, group: int = GROUP) -> tuple[Tensor, Tensor]:
    """(q int8 (R, C), scale fp16 (R, G)) with w ~= q * scale repeated over each group's columns;
    an all-zero group gets the smallest fp16 scale (and zeros)."""
    assert w.dim() == 2, f"group-wise quantisation needs a 2-D weight, got shape {tuple(w.shape)}"
    R, C = w.shape
    G = _groups(C, group)
    x = w.detach().float().reshape(R, G, C // G)
    want = x.abs().amax(dim=2) / 127.0  # (R, G)
    if bool((want > torch.finfo(torch.float16).max).any()):
        raise ValueError(f"a weight of magnitude {float(want.max()) * 127:.3g} is beyond what fp16 scales hold; "
                         "the model diverged: retrain it")
    scale = want.to(torch.float16)
    low = scale.float() < want  # round up: q never needs clamping, so the half-step bound holds
    scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    scale = torch.clamp(scale, min=2.0 ** -24)  # the smallest fp16 subnormal: all-zero groups get a scale > 0
    q = torch.round(x / scale.float()[:, :, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(R, C), scale


def to_half(w: Tensor) -> Tensor:
    """w in fp16; a weight beyond fp16's range (a diverged model) is refused, not turned into inf."""
    if bool((w.detach().abs() > torch.finfo(torch.float16).max).any()):
        raise ValueError(f"a weight of magnitude {float(w.detach().abs().max()):.3g} does not fit fp16; the model diverged: retrain it")
    return w.detach().to(torch.float16).clone()


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """The fp32 weight (R, C) of int8 q with per-group scales (R, G), or per-row ones (R,) (FORMAT_V1)."""
    if scale.dim() == 1:
        return q.float() * scale.float()[:, None]
    R, C = q.shape
    G = scale.shape[1]
    return (q.float().reshape(R, G, C // G) * scale.float()[:, :, None]).reshape(R, C)


class _TakesScaleShape(nn.Module):
    """Loads `scale` in whatever layout the checkpoint has (per-group fp16 or per-row fp32)."""

    scale: Tensor

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        given = state_dict.get(prefix + "scale")
        if isinstance(given, Tensor):
            self.scale = torch.empty_like(given, device=self.scale.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _LinearShape(nn.Module):
    """What a compressed Linear keeps as nn.Linear does: its sizes and an fp32 bias."""

    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _take_bias(self, m: nn.Linear) -> None:
        if m.bias is not None:
            self.bias = m.bias.detach().float().clone()


class Int8Linear(_TakesScaleShape, _LinearShape):
    """y = x @ dequantize(q, s).T + b with q int8 per output channel and column group."""

    weight_q: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, _groups(in_features, GROUP), dtype=torch.float16))

    @classmethod
    def from_float(cls, m: nn.Linear, group: int = GROUP) -> Int8Linear:
        out = cls(m.in_features, m.out_features, m.bias is not None)
        out.weight_q, out.scale = quantize_groups(m.weight, group)
        out._take_bias(m)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, dequantize(self.weight_q, self.scale), self.bias)


class Int8Embedding(_TakesScaleShape):
    """Row lookup of int8 rows times their scales (the padding row quantises to zeros)."""

    weight_q: Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_q", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, _groups(embedding_dim, GROUP), dtype=torch.float16))

    @classmethod
    def from_float(cls, m: nn.Embedding, group: int = GROUP) -> Int8Embedding:
        out = cls(m.num_embeddings, m.embedding_dim)
        out.weight_q, out.scale = quantize_groups(m.weight, group)
        return out

    @property
    def weight(self) -> Tensor:
        """The dequantised table (N, C), for code that reads .weight (device, shape)."""
        return dequantize(self.weight_q, self.scale)

    def forward(self, idx: Tensor) -> Tensor:
        rows = F.embedding(idx, self.weight_q).float()  # (..., C)
        s = self.scale[idx].float()  # (..., G) or (...,) per row
        if self.scale.dim() == 1:
            return rows * s.unsqueeze(-1)
        return rows * s.repeat_interleave(self.embedding_dim // self.scale.shape[1], dim=-1)


class HalfLinear(_LinearShape):
    """y = x @ w.float().T + b with w stored in fp16."""

    weight_h: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.register_buffer("weight_h", torch.zeros(out_features, in_features, dtype=torch.float16))

    @classmethod
    def from_float(cls, m: nn.Linear) -> HalfLinear:
        out = cls(m.in_features, m.out_features, m.bias is not None)
        out.weight_h = to_half(m.weight)
        out._take_bias(m)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_h.float(), self.bias)


class HalfEmbedding(nn.Module):
    """Row lookup of an fp16 table, returned in fp32."""

    weight_h: Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_h", torch.zeros(num_embeddings, embedding_dim, dtype=torch.float16))

    @classmethod
    def from_float(cls, m: nn.Embedding) -> HalfEmbedding:
        out = cls(m.num_embeddings, m.embedding_dim)
        out.weight_h = to_half(m.weight)
        return out

    @property
    def weight(self) -> Tensor:
        return self.weight_h.float()

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.weight_h).float()


def every_layer_int8(name: str, module: nn.Module) -> str:
    """The default policy: every Linear and Embedding int8 with group scales."""
    return INT8_GROUPS


def _compressed(m: nn.Module, how: str) -> nn.Module:
    if how == FP32:
        return m
    if how not in (INT8_GROUPS, INT8_ROWS, FP16):
        raise ValueError(f"unknown storage {how!r}; choose {INT8_GROUPS}, {INT8_ROWS}, {FP16} or {FP32}")
    group = GROUP if how == INT8_GROUPS else ROW
    if isinstance(m, nn.Linear):
        return HalfLinear.from_float(m) if how == FP16 else Int8Linear.from_float(m, group)
    assert isinstance(m, nn.Embedding)
    return HalfEmbedding.from_float(m) if how == FP16 else Int8Embedding.from_float(m, group)


def _swap(module: nn.Module, make: Callable[[str, nn.Module], nn.Module], prefix: str = "") -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.Linear, nn.Embedding)):
            setattr(module, name, make(prefix + name, child))
        else:
            _swap(child, make, f"{prefix}{name}.")


def is_int8(model: nn.Module) -> bool:
    """Whether the model holds int8 layers (it was quantised, or loaded from an int8 checkpoint)."""
    return any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules())


def quantize_model(model: nn.Module, policy: Policy = every_layer_int8) -> nn.Module:
    """A copy of `model` (left unchanged) whose Linear and Embedding layers are stored as `policy`
    says for each (by qualified name), in eval mode."""
    out = copy.deepcopy(model).eval()
    _swap(out, lambda name, m: _compressed(m, policy(name, m)))
    return out


def int8_skeleton(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """Turn a freshly built float model, in place, into the layout `state_dict` was saved in (each
    layer as its keys say: weight_q + scale int8, weight_h fp16, weight fp32), ready to load it."""
    def empty(name: str, m: nn.Module) -> nn.Module:
        int8, half = f"{name}.weight_q" in state_dict, f"{name}.weight_h" in state_dict
        if isinstance(m, nn.Linear) and (int8 or half):
            return (Int8Linear if int8 else HalfLinear)(m.in_features, m.out_features, m.bias is not None)
        if isinstance(m, nn.Embedding) and (int8 or half):
            return (Int8Embedding if int8 else HalfEmbedding)(m.num_embeddings, m.embedding_dim)
        return m

    _swap(model, empty)
    return model.eval()
