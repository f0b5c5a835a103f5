"""The raw values behind a trained model's codes: what a client sends and gets back.

Training sees small integer codes (fmrec.tokens); a client has raw item IDs, raw action values
("5" for a five-star rating) and raw context values ("tv"). A Vocabulary maps between the two
exactly as the training data did (code c is values[c - 1]; 0 = padding/unknown) and records each
item's popularity decile in the training events, which the served model reports for drift.
It is saved with every checkpoint and travels inside the exported artifact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from fmrec.data.schema import CONTEXT_FIELDS, EventLog, IntArray

DECILES = 10


@dataclass(frozen=True)
class Vocabulary:
    items: tuple[str, ...]
    actions: tuple[str, ...] = ()
    context: dict[str, tuple[str, ...]] = field(default_factory=dict)  # device / page / locale -> values
    item_decile: tuple[int, ...] = ()  # (n_items + 1,): 1 = the most popular tenth of items, 10 = the least; 0 = padding

    def __post_init__(self) -> None:
        assert not self.item_decile or len(self.item_decile) == len(self.items) + 1, \
            f"item_decile has {len(self.item_decile)} entries for {len(self.items)} items (+1 for padding)"
        unknown = sorted(set(self.context) - set(CONTEXT_FIELDS))
        assert not unknown, f"context vocabularies {unknown} are not context fields {CONTEXT_FIELDS}"

    @classmethod
    def from_log(cls, log: EventLog, train: npt.NDArray[np.bool_] | None = None) -> Vocabulary:
        """The log's vocabularies; popularity counts only the `train` events (all when None).

        A log without raw action values (built by hand) keeps its codes as the values: "1".."n"."""
        counts = np.bincount(log.item if train is None else log.item[train], minlength=log.n_items + 1)[1:]
        return cls(items=log.item_ids, actions=log.action_ids or tuple(str(c) for c in range(1, log.n_actions + 1)),
                   context=dict(log.context_ids), item_decile=tuple(int(d) for d in popularity_deciles(counts)))

    def values(self, name: str) -> tuple[str, ...] | None:
        """Raw values of an event field's codes, None for a field that has no vocabulary."""
        if name == "item":
            return self.items
        if name == "action":
            return self.actions or None
        return self.context.get(name)

    @cached_property
    def _codes(self) -> dict[str, dict[str, int]]:
        return {name: {v: c for c, v in enumerate(vals, start=1)}
                for name in ("item", "action", *self.context) if (vals := self.values(name))}

    def encode(self, name: str, raw: Iterable[str]) -> IntArray:
        """Codes of raw values of one field; 0 for a value training never saw."""
        lookup = self._codes[name]
        return np.fromiter((lookup.get(v, 0) for v in raw), dtype=np.int64)

    def decode_items(self, codes: IntArray) -> npt.NDArray[np.object_]:
        """Raw item IDs of item codes (code 0, no item, becomes the empty string)."""
        table = np.array(("", *self.items), dtype=object)
        out: npt.NDArray[np.object_] = table[codes]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"items": list(self.items), "actions": list(self.actions), "context": {k: list(v) for k, v in self.context.items()},
                "itemDecile": list(self.item_decile)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        return cls(items=tuple(d["items"]), actions=tuple(d.get("actions", ())),
                   context={k: tuple(v) for k, v in d.get("context", {}).items()}, item_decile=tuple(d.get("itemDecile", ())))


def popularity_deciles(counts: IntArray) -> IntArray:
    """Decile of each item by event count (ties keep item order), with 0 prepended for padding."""
    n = len(counts)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(n)
    out: IntArray = np.concatenate([[0], 1 + rank * DECILES // max(n, 1)]).astype(np.int64)
    return out
