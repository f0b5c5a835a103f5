"""A small typed client for the served model: a user's history as raw IDs in, ranked raw IDs out,
over KServe v2 HTTP or gRPC (tritonclient, from the serving extra); and what the user did with it.

    client = RecommenderClient("localhost:8000")             # or protocol="grpc" with the gRPC port
    history = [Event("50", timestamp=881250949, action="5"), Event("172", timestamp=881251000, action="4")]
    client.recommend(history, task="liked", k=10).items      # ['181', '174', ...]
    client.recommend(history, user="u42")                    # the same, routed by u42's bucket
    client.report("played", position=3, user="u42")          # u42 played the third item

Sticky buckets (A/B experiments). With `user`, a request carries the header x-fmops-bucket
(BUCKET_HEADER) with the user's bucket, 0..99:

    bucket(user) = int(sha256(user as UTF-8).hexdigest()[:15], 16) % 100

The first 15 hex digits (60 bits) fit a shell's signed 64-bit arithmetic, so any backend can compute
the same bucket; in bash:

    h=$(printf %s "$USER_ID" | sha256sum | cut -c1-15); echo $(( 16#$h % 100 ))

A user's bucket never changes, so a route matching the header by regex (Gateway API, Istio,
Traefik) sends the user to the same revision on every request: "^[0-9]$" is buckets 0-9 (10% of
users), "^1?[0-9]$" 0-19, "^[0-4]?[0-9]$" 0-49. The user key itself is never sent.

The header also puts the user in the experiment on the server: each user row answered (with at
least one item) in a request that carries it counts as an experiment exposure in
fmrec_experiment_requests_total, each outcome reported with it in fmrec_experiment_outcomes_total
(fmrec.serving.metrics), on the revision that served it. Without `user` a request is answered the
same, but counts in neither: a user outside every experiment, whom a Rollout's experiment step must
not compare. A header value that is not a bucket as bucket_headers() writes it (0..99, decimal) is
no error, and counts as no exposure. The server counts the header only when Triton forwards it to
the model: tritonserver must run with --http-header-forward-pattern=^x-fmops-bucket$ and
--grpc-header-forward-pattern=^x-fmops-bucket$ (fmrec.serving.protocol.FORWARD_ARGS). The local
KServe ClusterServingRuntime and fmrec.serving.server pass both; a ServingRuntime of your own must add
them to its tritonserver args.

Outcomes. report() sends what the user did (one of fmrec.serving.protocol.OUTCOMES: clicked,
played, added, skipped, ignored; POSITION the item's 1-based rank in the list) to the outcome model
NAME_outcome exported beside the model, with the same header: the outcome lands on the revision
that served the list, which counts it in fmrec_outcomes_total (fmrec.serving.metrics). Send it with
the same `user` (and `task`) as the recommend request.

The same two calls with curl (KServe v2 JSON; HOST the route's address, e.g. localhost:8000):

    B=$(h=$(printf %s "$USER_ID" | sha256sum | cut -c1-15); echo $(( 16#$h % 100 )))
    curl -sf "http://$HOST/v2/models/fmrec/infer" -H "x-fmops-bucket: $B" -H "Content-Type: application/json" -d '{"inputs": [
      {"name": "ITEMS", "datatype": "BYTES", "shape": [1, 2], "data": ["50", "172"]},
      {"name": "TIMESTAMPS", "datatype": "INT64", "shape": [1, 2], "data": [881250949, 881251000]},
      {"name": "ACTIONS", "datatype": "BYTES", "shape": [1, 2], "data": ["5", "4"]},
      {"name": "K", "datatype": "INT32", "shape": [1, 1], "data": [10]}]}'
    curl -sf "http://$HOST/v2/models/fmrec_outcome/infer" -H "x-fmops-bucket: $B" -H "Content-Type: application/json" -d '{"inputs": [
      {"name": "OUTCOME", "datatype": "BYTES", "shape": [1, 1], "data": ["played"]},
      {"name": "POSITION", "datatype": "INT32", "shape": [1, 1], "data": [3]}]}'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fmrec.data.schema import CONTEXT_FIELDS
from fmrec.serving.protocol import BUCKET_HEADER as BUCKET_HEADER  # re-exported: the client's constants, defined with the protocol
from fmrec.serving.protocol import BUCKETS as BUCKETS
from fmrec.serving.protocol import outcome_model


def bucket(user_key: str) -> int:
    """The user's sticky bucket, 0..99: the first 15 hex digits of SHA-256 of the UTF-8 key, mod 100.

    Stable across processes, hosts and languages (no salt, no hash randomisation); in bash:
    h=$(printf %s "$USER_ID" | sha256sum | cut -c1-15); echo $(( 16#$h % 100 ))"""
    return int(hashlib.sha256(user_key.encode("utf-8")).hexdigest()[:15], 16) % BUCKETS


def bucket_headers(user: str | None) -> dict[str, str] | None:
    """The header that routes a request by the user's bucket (None without a user)."""
    return None if user is None else {BUCKET_HEADER: str(bucket(user))}


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
        self.outcome_model = outcome_model(model)

    def recommend(self, history: Sequence[Event], task: str = "", k: int | None = None, exclude: Sequence[str] = (),
                  user: str | None = None) -> Ranked:
        """One user's recommendations; with `user`, routed by the user's bucket (BUCKET_HEADER)."""
        return self.recommend_many([history], task, k, exclude, users=None if user is None else [user])[0]

    def recommend_many(self, histories: Sequence[Sequence[Event]], task: str = "", k: int | None = None,
                       exclude: Sequence[str] = (), users: Sequence[str] | None = None) -> list[Ranked]:
        """Several users (same task, K and exclusions): one request, or with `users` (one per history)
        one request per bucket among them, each with its bucket's header, answers in the given order."""
        if users is None:
            return self._recommend(histories, task, k, exclude, None)
        if len(users) != len(histories):
            raise ValueError(f"{len(users)} users for {len(histories)} histories: give one user per history")
        groups: dict[int, list[int]] = {}
        for i, user in enumerate(users):
            groups.setdefault(bucket(user), []).append(i)
        out: list[Ranked | None] = [None] * len(histories)
        for rows in groups.values():
            for i, ranked in zip(rows, self._recommend([histories[i] for i in rows], task, k, exclude, users[rows[0]]), strict=True):
                out[i] = ranked
        return [r for r in out if r is not None]

    def _recommend(self, histories: Sequence[Sequence[Event]], task: str, k: int | None, exclude: Sequence[str],
                   user: str | None) -> list[Ranked]:
        result = self._client.infer(self.model, self._inputs(request_arrays(histories, task, k, exclude)), headers=bucket_headers(user))
        items, scores, users = (result.as_numpy(n) for n in ("TOPK_ITEMS", "TOPK_SCORES", "USER_EMBEDDING"))
        return [Ranked(items=[i.decode() for i in items[b] if i], scores=[float(s) for s, i in zip(scores[b], items[b], strict=True) if i],
                       user_embedding=users[b]) for b in range(len(histories))]

    def report(self, outcome: str, position: int | None = None, user: str | None = None, task: str = "") -> None:
        """Report what `user` did with a recommended item: `outcome` one of fmrec.serving.protocol.OUTCOMES,
        `position` the item's 1-based rank in the list, `task` the recommend request's. Sent to the
        outcome model with the user's bucket header, so it reaches the revision that served the list;
        a refused report raises the client's InferenceServerException (a 400 naming the input)."""
        self._client.infer(self.outcome_model, self._inputs(outcome_arrays([outcome], position, task)), headers=bucket_headers(user))

    def _inputs(self, arrays: Mapping[str, npt.NDArray[Any]]) -> list[Any]:
        inputs = []
        for name, arr in arrays.items():
            x = self._module.InferInput(name, list(arr.shape), DATATYPES[arr.dtype])
            x.set_data_from_numpy(arr)
            inputs.append(x)
        return inputs


def outcome_arrays(outcomes: Sequence[str], position: int | None = None, task: str = "") -> dict[str, npt.NDArray[Any]]:
    """The input tensors of one outcome request, one row per outcome (same position and task)."""
    arrays: dict[str, npt.NDArray[Any]] = {"OUTCOME": np.array([[o.encode()] for o in outcomes], dtype=np.object_)}
    if position is not None:
        arrays["POSITION"] = np.full((len(outcomes), 1), position, dtype=np.int32)
    if task:
        arrays["TASK"] = np.full((len(outcomes), 1), task.encode(), dtype=np.object_)
    return arrays
