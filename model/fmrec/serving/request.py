"""One user's request as a client sends it (raw values, any length) -> the tokens evaluation builds.

The client sends the user's history as raw values: item IDs, optional timestamps (seconds since
the epoch), action values and context values, one per event. From it the server builds exactly
what fmrec.eval.evaluate.ranked_scores feeds the model for the same history:

- events in timestamp order, events with the same timestamp by the tie key training uses
  (fmrec.data.schema.tie_keys, from the raw item ID and the timestamp), so the order the client
  sends them in does not matter;
- time gaps, hour of day and day of week from the timestamps of the whole history, so the
  oldest event in the window keeps its real gap when the client sends more than context_len
  events (send the whole history, or at least context_len + 1 events, for that);
- the newest context_len events with a known item, left-padded with 0;
- every known item of the history (and of EXCLUDE) removed from the ranking.

Unknown values (an item, action or context value training never saw) never fail a request: an
event with an unknown item is dropped after its time gap is counted, an unknown action or
context value becomes code 0 (as unknown values are in training), and each is counted.
What does fail a request is a RequestError (HTTP 400): a required input missing, inputs not
aligned with ITEMS, a timestamp outside MIN_TIMESTAMP..MAX_TIMESTAMP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fmrec.data.schema import CONTEXT_FIELDS, IntArray, raw_hashes, tie_keys
from fmrec.tokens import day_of_week, gap_to_bucket, hour_of_day
from fmrec.vocab import Vocabulary

TIME_FIELDS = ("timeGap", "hourOfDay", "dayOfWeek", "relativeTime")
# Every second a datetime can name, 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z: far beyond any real
# event, and small enough that no difference of two timestamps overflows int64 in the time features.
MIN_TIMESTAMP, MAX_TIMESTAMP = -62_135_596_800, 253_402_300_799


class RequestError(ValueError):
    """The request cannot be answered as sent; the message names the input and the fix (HTTP 400).

    `tensor` is the input at fault (e.g. "ITEMS"), or "" when it is the request as a whole."""

    def __init__(self, message: str, tensor: str = "") -> None:
        super().__init__(message)
        self.tensor = tensor


@dataclass(frozen=True)
class Query:
    """One user's request with raw values; every per-event sequence is aligned with items."""

    items: Sequence[str]
    timestamps: IntArray | None = None
    actions: Sequence[str] | None = None
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)  # device / page / locale
    task: str = ""  # "" = the foundation model itself
    exclude: Sequence[str] = ()
    k: int = 0  # 0 = the exported maximum


@dataclass(frozen=True)
class Encoded:
    """A Query as model input: field -> (T,) codes, left-padded; items not to recommend; unknown counts."""

    tokens: dict[str, IntArray]
    blocked: IntArray  # item codes removed from the ranking (the history's and EXCLUDE's)
    events: int  # events sent
    unknown: dict[str, int]  # field -> values training never saw (only fields with any)


def encode(q: Query, vocab: Vocabulary, fields: tuple[str, ...], T: int) -> Encoded:
    n = len(q.items)
    _check_aligned(q, n)
    if q.timestamps is None and (needed := [f for f in fields if f in TIME_FIELDS]):
        raise RequestError(f"TIMESTAMPS is required: this model was trained with {needed}; send one per ITEMS entry", "TIMESTAMPS")
    if q.actions is None and "action" in fields:
        raise RequestError("ACTIONS is required: this model was trained with the action field; send one per ITEMS entry", "ACTIONS")
    items = vocab.encode("item", q.items)  # (n,)
    if q.timestamps is None:
        order = np.arange(n)
    else:
        ts = np.asarray(q.timestamps, dtype=np.int64)
        order = np.lexsort((tie_keys(raw_hashes([str(i) for i in q.items]), ts), ts))  # as EventLog.sorted()
    items = items[order]
    codes: dict[str, IntArray] = {"item": items}
    unknown = {"item": int((items == 0).sum())}
    if q.timestamps is not None:
        ts = np.asarray(q.timestamps, dtype=np.int64)[order]
        gap = np.diff(ts, prepend=ts[:1])  # the first event of the history has no previous one: gap 0
        codes |= {"timeGap": gap_to_bucket(gap), "hourOfDay": hour_of_day(ts), "dayOfWeek": day_of_week(ts), "relativeTime": ts}
    if "action" in fields and q.actions is not None:
        codes["action"], unknown["action"] = _encode_values(vocab, "action", q.actions, order)
    for name in (f for f in fields if f in CONTEXT_FIELDS):
        sent = q.context.get(name)
        codes[name], unknown[name] = _encode_values(vocab, name, sent, order) if sent is not None else (np.zeros(n, np.int64), 0)
    known = items > 0
    tokens = {f: _left_pad(codes[f][known][-T:], T) for f in fields}
    excluded = vocab.encode("item", q.exclude)
    blocked = np.unique(np.concatenate([items[known], excluded[excluded > 0]]))
    return Encoded(tokens=tokens, blocked=blocked, events=n, unknown={f: c for f, c in unknown.items() if c})


def _check_aligned(q: Query, n: int) -> None:
    unknown = sorted(set(q.context) - set(CONTEXT_FIELDS))
    if unknown:
        raise RequestError(f"context inputs {unknown} are not context fields; use {[f.upper() for f in CONTEXT_FIELDS]}",
                           str(unknown[0]).upper())
    sizes = {"TIMESTAMPS": q.timestamps, "ACTIONS": q.actions, **{f.upper(): v for f, v in q.context.items()}}
    for name, values in sizes.items():
        if values is not None and len(values) != n:
            raise RequestError(f"{name} has {len(values)} entries but ITEMS has {n}: send one per event, oldest first", name)
    if q.timestamps is not None and len(q.timestamps):
        ts = np.asarray(q.timestamps)
        if ts.dtype.kind not in "iu":
            raise RequestError(f"TIMESTAMPS has datatype {ts.dtype}; send whole seconds since the epoch (INT64)", "TIMESTAMPS")
        bad = np.flatnonzero((ts < MIN_TIMESTAMP) | (ts > MAX_TIMESTAMP))
        if len(bad):
            hint = " (milliseconds? send seconds)" if ts[bad[0]] > MAX_TIMESTAMP else ""
            raise RequestError(f"TIMESTAMPS has {ts[bad[0]]} at event {bad[0]}: send seconds since the epoch from {MIN_TIMESTAMP} "
                               f"to {MAX_TIMESTAMP} (the years 1 to 9999){hint}", "TIMESTAMPS")


def _encode_values(vocab: Vocabulary, name: str, raw: Sequence[str], order: IntArray) -> tuple[IntArray, int]:
    """Codes of one field's raw values in event order, and how many non-empty values are unknown."""
    if vocab.values(name) is None:
        return np.zeros(len(raw), np.int64), 0
    values = [raw[i] for i in order]
    codes = vocab.encode(name, values)
    return codes, sum(1 for c, v in zip(codes, values, strict=True) if c == 0 and v != "")


def _left_pad(codes: IntArray, T: int) -> IntArray:
    out: IntArray = np.zeros(T, dtype=np.int64)
    if len(codes):
        out[T - len(codes):] = codes
    return out
