"""A small typed client for the served model: a user's history as raw IDs in, ranked raw IDs out,
over KServe v2 HTTP or gRPC (tritonclient, from the serving extra).

    client = RecommenderClient("localhost:8000")             # or protocol="grpc" with the gRPC port
    history = [Event("50", timestamp=881250949, action="5"), Event("172", timestamp=881251000, action="4")]
    client.recommend(history, task="liked", k=10).items      # ['181', '174', ...]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fmrec.data.schema import CONTEXT_FIELDS


@dataclass(frozen=True)
class Event:
    item: str
    timestamp: int | None = None
    action: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)  # device / page / locale -> raw value


@dataclass(frozen=True)
class Ranked:
    items: list[str]  # raw item IDs, best first
    scores: list[float]
    user_embedding: npt.NDArray[np.float32]


def request_arrays(histories: Sequence[Sequence[Event]], task: str = "", k: int | None = None,
                   exclude: Sequence[str] = ()) -> dict[str, npt.NDArray[Any]]:
    """The input tensors for one request with one row per history (shorter rows padded with "" items)."""
    B, L = len(histories), max((len(h) for h in histories), default=0)
    events = [e for h in histories for e in h]

    def column(get: Any, fill: object, dtype: Any) -> npt.NDArray[Any]:
        out = np.full((B, L), fill, dtype=dtype)
        for b, h in enumerate(histories):
            for i, e in enumerate(h):
                out[b, i] = get(e)
        return out

    arrays: dict[str, npt.NDArray[Any]] = {"ITEMS": column(lambda e: e.item.encode(), b"", np.object_)}
    with_time = [e.timestamp is not None for e in events]
    if any(with_time):
        if not all(with_time):
            raise ValueError("give every event a timestamp or none: the model orders events and derives time gaps from them")
        arrays["TIMESTAMPS"] = column(lambda e: e.timestamp, 0, np.int64)
    if any(e.action is not None for e in events):
        arrays["ACTIONS"] = column(lambda e: (e.action or "").encode(), b"", np.object_)
    for name in CONTEXT_FIELDS:
        if any(name in e.context for e in events):
            arrays[name.upper()] = column(lambda e, n=name: e.context.get(n, "").encode(), b"", np.object_)
    if task:
        arrays["TASK"] = np.full((B, 1), task.encode(), dtype=np.object_)
    if k is not None:
        arrays["K"] = np.full((B, 1), k, dtype=np.int32)
    if exclude:
        arrays["EXCLUDE"] = np.array([[x.encode() for x in exclude]] * B, dtype=np.object_)
    return arrays


DATATYPES = {np.dtype(np.object_): "BYTES", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}


class RecommenderClient:
    def __init__(self, url: str, model: str = "fmrec", protocol: Literal["http", "grpc"] = "http") -> None:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        self._module: Any = module
        self._client = module.InferenceServerClient(url)
        self.model = model

    def recommend(self, history: Sequence[Event], task: str = "", k: int | None = None, exclude: Sequence[str] = ()) -> Ranked:
        return self.recommend_many([history], task, k, exclude)[0]

    def recommend_many(self, histories: Sequence[Sequence[Event]], task: str = "", k: int | None = None,
                       exclude: Sequence[str] = ()) -> list[Ranked]:
        """One request for several users (same task, K and exclusions)."""
        inputs = []
        for name, arr in request_arrays(histories, task, k, exclude).items():
            x = self._module.InferInput(name, list(arr.shape), DATATYPES[arr.dtype])
            x.set_data_from_numpy(arr)
            inputs.append(x)
        result = self._client.infer(self.model, inputs)
        items, scores, users = (result.as_numpy(n) for n in ("TOPK_ITEMS", "TOPK_SCORES", "USER_EMBEDDING"))
        return [Ranked(items=[i.decode() for i in items[b] if i], scores=[float(s) for s, i in zip(scores[b], items[b], strict=True) if i],
                       user_embedding=users[b]) for b in range(len(histories))]
