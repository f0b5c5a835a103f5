"""The served model's tensor contract (KServe v2 / Triton), in one place: config.pbtxt is rendered
from it, the Triton model parses requests with it, the client builds requests with it.

Every input has a leading batch dimension: a request carries B users (usually 1). Per-event
inputs are aligned with ITEMS; a request with several users pads shorter rows with "" items,
which are ignored (a single user needs no padding at all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fmrec.data.schema import CONTEXT_FIELDS
from fmrec.serving.request import Query, RequestError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 datatype: BYTES, INT64, INT32, FP32
    dims: tuple[int, ...]  # without the batch dimension; -1 = any length
    doc: str
    optional: bool = False

    @property
    def per_event(self) -> bool:
        return self.dims == (-1,) and self.name not in ("EXCLUDE", "TOPK_ITEMS", "TOPK_SCORES")

    def pbtxt(self) -> str:
        dtype = "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"
        extra = (" allow_ragged_batch: true" if -1 in self.dims and not self.name.startswith("TOPK") else "") + \
            (" optional: true" if self.optional else "")
        return f'{{ name: "{self.name}" data_type: {dtype} dims: [ {", ".join(map(str, self.dims))} ]{extra} }}'


INPUTS = (
    TensorSpec("ITEMS", "BYTES", (-1,), "raw item IDs of the user's history, one per event (the whole history, or at least "
               "context length + 1 events, for exact time gaps); unknown IDs are counted and dropped"),
    TensorSpec("TIMESTAMPS", "INT64", (-1,), "seconds since the epoch, one per event; required by models with time fields",
               optional=True),
    TensorSpec("ACTIONS", "BYTES", (-1,), "raw action values (e.g. ratings \"1\"..\"5\"), one per event; required by models with "
               "the action field", optional=True),
    *(TensorSpec(f.upper(), "BYTES", (-1,), f"raw {f} values, one per event; unknown or missing = unknown, as in training",
                 optional=True) for f in CONTEXT_FIELDS),
    TensorSpec("TASK", "BYTES", (1,), "a task adapter's name, or \"fm\" (the default) for the foundation model itself",
               optional=True),
    TensorSpec("EXCLUDE", "BYTES", (-1,), "raw item IDs never to recommend (besides the history's)", optional=True),
    TensorSpec("K", "INT32", (1,), "how many items to return, 1..the exported maximum (the default)", optional=True),
)


def outputs(d_model: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("TOPK_ITEMS", "BYTES", (-1,), "raw item IDs, best first (\"\" where fewer than K items are left)"),
        TensorSpec("TOPK_SCORES", "FP32", (-1,), "their scores (-inf where \"\")"),
        TensorSpec("USER_EMBEDDING", "FP32", (d_model,), "the user state the items were scored against"),
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def queries(get: Callable[[str], npt.NDArray[np.generic] | None]) -> list[Query]:
    """The rows of one request; `get(name)` returns an input's array (B, ...) or None when absent."""
    items = get("ITEMS")
    if items is None:
        raise RequestError("ITEMS is required: the raw item IDs of the user's history, oldest first")
    if items.ndim != 2:
        raise RequestError(f"ITEMS must have shape [batch, events], got {list(items.shape)}")
    B, L = items.shape
    arrays = {spec.name: get(spec.name) for spec in INPUTS[1:]}
    for spec in INPUTS[1:]:
        arr = arrays[spec.name]
        if arr is None:
            continue
        if arr.shape[0] != B or (spec.per_event and arr.shape != (B, L)) or (spec.dims == (1,) and arr.shape != (B, 1)):
            want = f"[{B}, {L}] like ITEMS" if spec.per_event else f"[{B}, 1]" if spec.dims == (1,) else f"[{B}, n]"
            raise RequestError(f"{spec.name} has shape {list(arr.shape)}; send {want}")
    out = []
    for b in range(B):
        raw = [_text(v) for v in items[b]]
        keep = np.array([v != "" for v in raw], dtype=bool)  # "" pads shorter rows of a multi-user request
        ts, actions, task, exclude, k = (arrays[n] for n in ("TIMESTAMPS", "ACTIONS", "TASK", "EXCLUDE", "K"))
        context = {f: [_text(v) for v in arr[b][keep]] for f in CONTEXT_FIELDS if (arr := arrays[f.upper()]) is not None}
        out.append(Query(
            items=[v for v, kept in zip(raw, keep, strict=True) if kept],
            timestamps=ts[b][keep].astype(np.int64) if ts is not None else None,
            actions=[_text(v) for v in actions[b][keep]] if actions is not None else None,
            context=context,
            task=_text(task[b, 0]) if task is not None else "",
            exclude=[e for v in exclude[b] if (e := _text(v))] if exclude is not None else (),
            k=int(k[b, 0]) if k is not None else 0,
        ))
    return out
