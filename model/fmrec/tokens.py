"""Tokenisation: each event becomes one token with several fields.

Fields: item code, action code, time-gap bucket (log2 seconds since the previous event of the
same user), hour of day, day of week, and any context codes (device, page, locale). All codes
are small integers with 0 = padding/unknown, ready to index embedding tables. One field is not a
code: relativeTime carries each event's timestamp (seconds), which the model turns into an
attention bias between events (fmrec.nn.fm.TimeBias) instead of embedding it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fmrec.data.schema import EventLog, IntArray

N_GAP_BUCKETS = 24  # 1 + log2 buckets up to ~2^22 s (48 days) and beyond
FIELDS = ("item", "action", "timeGap", "hourOfDay", "dayOfWeek", "relativeTime", "device", "page", "locale")


def gap_to_bucket(gap: IntArray) -> IntArray:
    """Seconds since the previous event -> bucket: 1 for 0 s (or no previous event), else 2 + floor(log2)."""
    b = np.where(gap > 0, 2 + np.floor(np.log2(np.maximum(gap, 1))).astype(np.int64), 1)
    out: IntArray = np.minimum(b, N_GAP_BUCKETS - 1).astype(np.int64)
    return out


def hour_of_day(timestamp: IntArray) -> IntArray:
    """Code 1..24 of the UTC hour of each timestamp (0 stays free for padding)."""
    out: IntArray = ((timestamp // 3600) % 24 + 1).astype(np.int64)
    return out


def day_of_week(timestamp: IntArray) -> IntArray:
    """Code 1..7 of the UTC weekday of each timestamp, 1 = Monday (1970-01-01 was a Thursday)."""
    out: IntArray = ((timestamp // 86400 + 3) % 7 + 1).astype(np.int64)
    return out


def gap_buckets(timestamp: IntArray, user: IntArray) -> IntArray:
    """Time-gap bucket of every event of a sorted log; a user's first event has no previous one."""
    gap = np.diff(timestamp, prepend=timestamp[:1])
    first = np.ones(len(user), dtype=bool)
    first[1:] = user[1:] != user[:-1]
    gap[first] = 0
    return gap_to_bucket(gap)


@dataclass(frozen=True)
class Tokens:
    """Per-event field codes of a sorted EventLog, aligned with its rows."""

    fields: dict[str, IntArray]

    def __getitem__(self, name: str) -> IntArray:
        return self.fields[name]


def tokenize(log: EventLog) -> Tokens:
    fields: dict[str, IntArray] = {
        "item": log.item, "action": log.action, "timeGap": gap_buckets(log.timestamp, log.user),
        "hourOfDay": hour_of_day(log.timestamp), "dayOfWeek": day_of_week(log.timestamp), "relativeTime": log.timestamp,
    }
    fields.update(log.context)
    return Tokens(fields)


def vocab_sizes(log: EventLog) -> dict[str, int]:
    """Embedding table size per field (codes + padding)."""
    sizes = {"item": log.n_items + 1, "action": log.n_actions + 1, "timeGap": N_GAP_BUCKETS, "hourOfDay": 25, "dayOfWeek": 8,
             "relativeTime": N_GAP_BUCKETS}  # relativeTime: the buckets of its attention bias
    for name, col in log.context.items():
        sizes[name] = int(col.max()) + 1
    return sizes


def windows(offsets: IntArray, keep: npt.NDArray[np.bool_], length: int, stride: int) -> list[IntArray]:
    """Sliding windows (of row indices, at most length+1 long) over each user's kept events.

    Long histories yield several overlapping windows (stride apart), ending at the newest event;
    short ones yield one. A window of n rows gives n-1 next-event training targets.
    """
    out: list[IntArray] = []
    for u in range(len(offsets) - 1):
        rows = np.arange(offsets[u], offsets[u + 1])[keep[offsets[u]:offsets[u + 1]]]
        if len(rows) < 2:
            continue
        end = len(rows)
        while True:
            start = max(0, end - (length + 1))
            out.append(rows[start:end])
            if start == 0:
                break
            end -= stride
    return out
