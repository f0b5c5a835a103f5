"""Leave-one-out split: per user, the last event is test, the second-to-last validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fmrec.data.schema import EventLog, IntArray


@dataclass(frozen=True)
class LeaveOneOut:
    log: EventLog  # sorted
    offsets: IntArray  # CSR over users: events of user u are log[offsets[u-1]:offsets[u]]
    val_users: IntArray  # users with >= 3 events (a train prefix, a validation and a test event)
    test_users: IntArray  # users with >= 2 events

    def history(self, user: int, stage: str) -> IntArray:
        """Indices into log of the user's events before the held-out event of `stage` (val or test),
        or all of them for stage "full" (serving: nothing is held out)."""
        end = int(self.offsets[user]) if stage == "full" else self.target(user, stage)
        return np.arange(int(self.offsets[user - 1]), end, dtype=np.int64)

    def target(self, user: int, stage: str) -> int:
        """Index into log of the held-out event for `stage` (val: second-to-last, test: last)."""
        assert stage in ("val", "test"), f"stage must be val or test, got {stage!r}"
        return int(self.offsets[user]) - (2 if stage == "val" else 1)

    def train_mask(self, stage: str = "test") -> npt.NDArray[np.bool_]:
        """Events usable for training when evaluating `stage` (test: all but the last; val: all but the last two)."""
        drop = 1 if stage == "test" else 2
        counts = np.diff(self.offsets)
        pos_from_end = np.repeat(counts, counts) - (np.arange(len(self.log)) - np.repeat(self.offsets[:-1], counts)) - 1
        mask: npt.NDArray[np.bool_] = pos_from_end >= drop
        return mask


def leave_one_out(log: EventLog) -> LeaveOneOut:
    log = log.sorted()
    offsets = log.user_offsets()
    counts = np.diff(offsets)
    users = np.arange(1, len(counts) + 1)
    return LeaveOneOut(log=log, offsets=offsets, val_users=users[counts >= 3], test_users=users[counts >= 2])
