"""The served model's tensor contract (KServe v2 / Triton), in one place: config.pbtxt is rendered
from it, the Triton model parses requests with it, the client builds requests with it.

Every input has a leading batch dimension: a request carries B users (usually 1). Per-event
inputs are aligned with ITEMS; a request with several users pads shorter rows with "" items,
which are ignored (a single user needs no padding at all).

Limits, each refused with a 400 that names the input (RequestError), never answered partly:

- MAX_EVENTS events per user: ITEMS and every per-event input hold at most 10,000 columns.
  The model reads the newest context-length events with a known item (and one more for the oldest
  time gap), so the newest 10,000 events of a longer history are all a request needs.
- MAX_EXCLUDE item IDs per user in EXCLUDE: at most 10,000.
- MAX_REQUEST_VALUES per request: ITEMS and EXCLUDE each hold at most 50,000 values over all
  users (users x columns, padding included): reading the largest request delays the batch it
  shares by a fraction of a second, not seconds. More users go in more requests.
- MAX_VALUE_BYTES per BYTES value (an item ID, action, context value, task name): at most 1,024
  bytes, and valid UTF-8.
- K: 1..the exported maximum (`export --top-k`, 100 by default); 0 or absent = that maximum.
- TIMESTAMPS: whole seconds from MIN_TIMESTAMP to MAX_TIMESTAMP (0001-01-01 to 9999-12-31 UTC,
  fmrec.serving.request); a larger value is usually milliseconds.
- users per request: the exported max_batch_size (`export`'s max_batch, 64), enforced by Triton.

Outcomes. Beside the recommend model NAME, the repository holds NAME_outcome (outcome_model()),
to which clients report what a user did with a recommendation: one row per outcome, each row

- OUTCOME: one of OUTCOMES, exactly (lowercase); anything else is refused naming OUTCOME and the
  set, so the label values of fmrec_outcomes_total stay this fixed set:
    clicked  the user opened or selected the item
    played   the user played, watched, read or bought it: the outcome the item was recommended for
    added    the user saved it for later (a list, a library, a cart)
    skipped  the user dismissed it or skipped past it
    ignored  the list was shown and the user did nothing with the item (without POSITION: with the list)
- POSITION (optional): the item's 1-based rank in the list the recommend model returned, 1..the
  exported maximum K; anything else is refused naming POSITION.
- TASK (optional): the task the list was recommended for, as the recommend request's TASK ("" or
  "fm" = the foundation model; another name must be one of the exported adapters').

A request with any bad row is refused whole (a 400 naming the input, "row N: " first when it has
several), and counts nothing. The answer is ACK, 1 per row counted.

Experiments. A client in an A/B experiment sends the header x-fmops-bucket (BUCKET_HEADER) with the
user's bucket, 0..99 (fmrec.serving.client.bucket), on both its recommend requests and its outcome
reports. Routes match it to pick the revision; the server counts it too: each user row answered with
at least one item in a recommend request that carried the header is an experiment exposure
(fmrec_experiment_requests_total), each outcome row of a report that carried it an experiment
outcome (fmrec_experiment_outcomes_total, fmrec.serving.metrics). Requests without the header (users
in no experiment) are answered and counted in every other metric as before, never in these two, so a
revision that also serves users outside the experiment (the stable) compares with the candidate on
the experiment's users only.

The server sees the header only when Triton forwards it: tritonserver must run with
FORWARD_ARGS (--http-header-forward-pattern=^x-fmops-bucket$ and
--grpc-header-forward-pattern=^x-fmops-bucket$), which make it a request parameter (key: the header's
name as the client spelled it; gRPC metadata keys are lowercase; the pattern matches any case).
fmrec.serving.server starts Triton with them, and so does the local KServe ClusterServingRuntime
(devtools); a ServingRuntime of your own needs them in its container args, or nothing is counted as
an experiment exposure or outcome (requests are still answered). experiment_bucket() reads the
parameter: a value that is not a bucket as the client writes it (0..99 in decimal without leading
zeros; surrounding spaces and tabs are ignored), not valid UTF-8, or sent twice with different values
is no error for the request (the route already chose the revision) but counts as no exposure or
outcome of the experiment; no metric counts such values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fmrec.data.schema import CONTEXT_FIELDS
from fmrec.serving.request import Query, RequestError

if TYPE_CHECKING:
    from fmrec.serving.infer import Prepared, Recommender

MAX_EVENTS = 10_000  # per user, in ITEMS and every per-event input
MAX_EXCLUDE = 10_000  # item IDs per user in EXCLUDE
MAX_REQUEST_VALUES = 50_000  # in ITEMS, and in EXCLUDE, over all users of one request
MAX_VALUE_BYTES = 1_024  # per BYTES value


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
               f"context length + 1 events, for exact time gaps; at most {MAX_EVENTS:,}); unknown IDs are counted and dropped"),
    TensorSpec("TIMESTAMPS", "INT64", (-1,), "seconds since the epoch (years 1 to 9999), one per event; required by models with "
               "time fields", optional=True),
    TensorSpec("ACTIONS", "BYTES", (-1,), "raw action values (e.g. ratings \"1\"..\"5\"), one per event; required by models with "
               "the action field", optional=True),
    *(TensorSpec(f.upper(), "BYTES", (-1,), f"raw {f} values, one per event; unknown or missing = unknown, as in training",
                 optional=True) for f in CONTEXT_FIELDS),
    TensorSpec("TASK", "BYTES", (1,), "a task adapter's name, or \"fm\" (the default) for the foundation model itself",
               optional=True),
    TensorSpec("EXCLUDE", "BYTES", (-1,), f"raw item IDs never to recommend (besides the history's), at most {MAX_EXCLUDE:,}",
               optional=True),
    TensorSpec("K", "INT32", (1,), "how many items to return, 1..the exported maximum (the default)", optional=True),
)


def outputs(d_model: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("TOPK_ITEMS", "BYTES", (-1,), "raw item IDs, best first (\"\" where fewer than K items are left)"),
        TensorSpec("TOPK_SCORES", "FP32", (-1,), "their scores (-inf where \"\")"),
        TensorSpec("USER_EMBEDDING", "FP32", (d_model,), "the user state the items were scored against"),
    )


def _texts(name: str, arr: npt.NDArray[np.generic]) -> npt.NDArray[np.object_]:
    """A BYTES input as str, same shape; refused unless every value is UTF-8 of at most MAX_VALUE_BYTES."""
    values = arr.ravel().tolist()
    if all(type(v) is bytes for v in values) and max(map(len, values), default=0) <= MAX_VALUE_BYTES:
        try:  # the common case, at C speed; the loop below finds and names a bad value
            fast = np.empty(len(values), dtype=np.object_)
            fast[:] = [v.decode("utf-8") for v in values]
            return fast.reshape(arr.shape)
        except UnicodeDecodeError:
            pass
    out = np.empty(arr.shape, dtype=np.object_)
    for pos, element in np.ndenumerate(arr):
        where = f"{name}{list(pos)}"
        # Triton passes bytes; a caller in this process may pass str (a lone surrogate then fails as non-UTF-8)
        value: object = element.encode("utf-8", "surrogatepass") if isinstance(element, str) else element
        if not isinstance(value, bytes):
            raise RequestError(f"{where} is not BYTES but {type(value).__name__}: send {name} as strings", name)
        if len(value) > MAX_VALUE_BYTES:
            raise RequestError(f"{where} has {len(value)} bytes; values are at most {MAX_VALUE_BYTES} bytes", name)
        try:
            out[pos] = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RequestError(f"{where} is not UTF-8 ({err.reason} at byte {err.start}: "
                               f"{value[err.start:err.start + 4]!r}): send {name} as UTF-8 text", name) from None
    return out


def _integers(spec: TensorSpec, arr: npt.NDArray[np.generic]) -> npt.NDArray[np.int64]:
    if arr.dtype.kind != "i":
        raise RequestError(f"{spec.name} has datatype {arr.dtype}; send {spec.datatype}", spec.name)
    return arr.astype(np.int64)


def queries(get: Callable[[str], npt.NDArray[np.generic] | None]) -> list[Query]:
    """The rows of one request; `get(name)` returns an input's array (B, ...) or None when absent.

    Checks shapes, datatypes, the limits above and UTF-8 before anything is decoded into a Query;
    RequestError names the input (and the position [row, column] of a bad value)."""
    items = get("ITEMS")
    if items is None:
        raise RequestError("ITEMS is required: the raw item IDs of the user's history, oldest first", "ITEMS")
    if items.ndim != 2:
        raise RequestError(f"ITEMS must have shape [users, events], got {list(items.shape)}", "ITEMS")
    B, L = items.shape
    if B == 0:
        raise RequestError("ITEMS has no rows (shape [0, ...]): send one row per user", "ITEMS")
    if L > MAX_EVENTS:
        raise RequestError(f"ITEMS has {L} events per user; at most {MAX_EVENTS} are accepted: send the newest {MAX_EVENTS} "
                           "(the model reads only the newest context-length ones)", "ITEMS")
    if B * L > MAX_REQUEST_VALUES:
        raise RequestError(f"ITEMS has {B} users x {L} events = {B * L} values; at most {MAX_REQUEST_VALUES} are accepted in "
                           "one request: send the users in several requests", "ITEMS")
    arrays = {spec.name: get(spec.name) for spec in INPUTS[1:]}
    for spec in INPUTS[1:]:
        arr = arrays[spec.name]
        if arr is None:
            continue
        if arr.ndim != 2 or arr.shape[0] != B or (spec.per_event and arr.shape != (B, L)) or (spec.dims == (1,) and arr.shape != (B, 1)):
            want = f"[{B}, {L}] like ITEMS" if spec.per_event else f"[{B}, 1]" if spec.dims == (1,) else f"[{B}, n]"
            raise RequestError(f"{spec.name} has shape {list(arr.shape)}; send {want}", spec.name)
        if spec.name == "EXCLUDE" and arr.shape[1] > MAX_EXCLUDE:
            raise RequestError(f"EXCLUDE has {arr.shape[1]} item IDs per user; at most {MAX_EXCLUDE} are accepted", "EXCLUDE")
        if spec.name == "EXCLUDE" and arr.size > MAX_REQUEST_VALUES:
            raise RequestError(f"EXCLUDE has {B} users x {arr.shape[1]} item IDs = {arr.size} values; at most {MAX_REQUEST_VALUES} "
                               "are accepted in one request: send the users in several requests", "EXCLUDE")
    text = {spec.name: _texts(spec.name, arr) for spec in INPUTS if spec.datatype == "BYTES"
            if (arr := items if spec.name == "ITEMS" else arrays[spec.name]) is not None}
    ints = {spec.name: _integers(spec, arr) for spec in INPUTS if spec.datatype != "BYTES" if (arr := arrays[spec.name]) is not None}
    ts, actions, task, exclude, k = (text.get(n, ints.get(n)) for n in ("TIMESTAMPS", "ACTIONS", "TASK", "EXCLUDE", "K"))
    out = []
    for b in range(B):
        raw = text["ITEMS"][b]
        keep = raw != ""  # (L,) "" pads shorter rows of a multi-user request
        out.append(Query(
            items=list(raw[keep]),
            timestamps=ts[b][keep] if ts is not None else None,
            actions=list(actions[b][keep]) if actions is not None else None,
            context={f: list(text[f.upper()][b][keep]) for f in CONTEXT_FIELDS if f.upper() in text},
            task=str(task[b, 0]) if task is not None else "",
            exclude=[e for e in exclude[b] if e] if exclude is not None else (),
            k=int(k[b, 0]) if k is not None else 0,
        ))
    return out


def prepare(rec: Recommender, get: Callable[[str], npt.NDArray[np.generic] | None]) -> list[Prepared]:
    """One request's rows, parsed and validated for `rec`, ready to batch with other requests' rows.

    RequestError names the input (and the user row of a request with several)."""
    rows = queries(get)
    out = []
    for b, q in enumerate(rows):
        try:
            out.append(rec.prepare(q))
        except RequestError as err:
            raise RequestError(f"user row {b}: {err}" if len(rows) > 1 else str(err), err.tensor) from None
    return out


# ---- outcomes: what a user did with a recommendation, reported to the NAME_outcome model ----------------------------

OUTCOME_SUFFIX = "_outcome"
OUTCOMES = ("clicked", "played", "added", "skipped", "ignored")  # the label values of fmrec_outcomes_total, no others

OUTCOME_INPUTS = (
    TensorSpec("OUTCOME", "BYTES", (1,), f"what the user did with the recommended item: one of {', '.join(OUTCOMES)}"),
    TensorSpec("POSITION", "INT32", (1,), "the item's 1-based rank in the returned list, 1..the exported maximum K", optional=True),
    TensorSpec("TASK", "BYTES", (1,), "the task the list was recommended for, as in the recommend request (\"fm\", the default, "
               "for the foundation model itself)", optional=True),
)
OUTCOME_OUTPUTS = (TensorSpec("ACK", "INT32", (1,), "1 for each row counted"),)


def outcome_model(name: str) -> str:
    """The name of the outcome model exported beside the recommend model `name`."""
    return f"{name}{OUTCOME_SUFFIX}"


@dataclass(frozen=True)
class Outcome:
    """One reported outcome, validated."""

    outcome: str  # one of OUTCOMES
    task: str  # a served task, never "" (the foundation model's own name instead)
    position: int | None  # 1..K, or None when not reported


def outcomes(get: Callable[[str], npt.NDArray[np.generic] | None], tasks: Sequence[str], k_max: int) -> list[Outcome]:
    """The rows of one outcome request; `get(name)` returns an input's array (B, 1) or None when absent.

    `tasks` are the served tasks, the foundation model's own first (as Recommender.tasks), `k_max` the
    exported maximum K. RequestError names the input (and the row of a request with several)."""
    sent = get("OUTCOME")
    if sent is None:
        raise RequestError(f"OUTCOME is required: what the user did, one of {list(OUTCOMES)}", "OUTCOME")
    if sent.ndim != 2 or sent.shape[1:] != (1,):
        raise RequestError(f"OUTCOME must have shape [rows, 1], got {list(sent.shape)}", "OUTCOME")
    B = sent.shape[0]
    if B == 0:
        raise RequestError("OUTCOME has no rows (shape [0, 1]): send one row per outcome", "OUTCOME")
    arrays = {spec.name: get(spec.name) for spec in OUTCOME_INPUTS[1:]}
    for name, arr in arrays.items():
        if arr is not None and arr.shape != (B, 1):
            raise RequestError(f"{name} has shape {list(arr.shape)}; send [{B}, 1] like OUTCOME", name)
    what = _texts("OUTCOME", sent)
    task = _texts("TASK", t) if (t := arrays["TASK"]) is not None else None
    position = _integers(OUTCOME_INPUTS[1], p) if (p := arrays["POSITION"]) is not None else None
    out = []
    for b in range(B):
        row = f"row {b}: " if B > 1 else ""
        name = str(what[b, 0])
        if name not in OUTCOMES:
            raise RequestError(f"{row}OUTCOME {name[:64]!r} is not an outcome this model counts: send one of {list(OUTCOMES)}",
                               "OUTCOME")
        served = str(task[b, 0]) if task is not None else ""
        served = served or tasks[0]
        if served not in tasks:
            raise RequestError(f"{row}unknown TASK {served[:64]!r}: this model serves {list(tasks)}", "TASK")
        rank = int(position[b, 0]) if position is not None else None
        if rank is not None and not 1 <= rank <= k_max:
            raise RequestError(f"{row}POSITION={rank} is outside 1..{k_max}: send the item's 1-based rank in the list "
                               f"the model returned (at most {k_max} items)", "POSITION")
        out.append(Outcome(outcome=name, task=served, position=rank))
    return out


# ---- experiments: the bucket header, counted per request ---------------------------------------------------------------

BUCKET_HEADER = "x-fmops-bucket"  # a user's sticky bucket (fmrec.serving.client.bucket): routes and experiment counts read it
BUCKETS = 100  # buckets 0..99
FORWARD_PATTERN = f"^{BUCKET_HEADER}$"  # the header names Triton forwards to the models as request parameters
FORWARD_ARGS = (f"--http-header-forward-pattern={FORWARD_PATTERN}", f"--grpc-header-forward-pattern={FORWARD_PATTERN}")
_BUCKET_TEXT = re.compile(r"0|[1-9][0-9]?")  # 0..99 as str(int) writes it


class _Pairs(list[tuple[str, object]]):
    """A JSON object's members in order, duplicates kept (Triton appends forwarded headers to the body's parameters)."""


def experiment_bucket(parameters: str | None) -> int | None:
    """The bucket a request carried in BUCKET_HEADER, from its Triton request parameters (the JSON
    object InferenceRequest.parameters() returns; None when they could not be read); None when the
    request carried none, or a malformed one (see the module docstring: never an error)."""
    if not parameters:
        return None
    try:
        members = json.loads(parameters, object_pairs_hook=_Pairs)
    except ValueError:
        return None
    if not isinstance(members, _Pairs):
        return None
    values = {v.strip(" \t") if isinstance(v, str) else None for k, v in members if k.lower() == BUCKET_HEADER}
    if len(values) != 1:  # none sent, or several that disagree
        return None
    (text,) = values
    return int(text) if text is not None and _BUCKET_TEXT.fullmatch(text) else None


def request_parameters(request: Any) -> str | None:
    """A Triton request's parameters (InferenceRequest.parameters(): a JSON object, the forwarded
    BUCKET_HEADER among them), or None when they cannot be read: a forwarded header value that is not
    UTF-8 makes the python backend's parameters() raise, and that is the client's header, no bug to
    fail the batch for. A backend without parameters() forwards no header either."""
    read = getattr(request, "parameters", None)
    if read is None:
        return None
    try:
        text = read()
    except UnicodeDecodeError:
        return None
    return text if isinstance(text, str) else None
