"""Users' own event logs: Parquet or CSV, columns named by a FeatureSchema (as in the CRD)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fmrec.data.schema import CONTEXT_FIELDS, EventLog, IntArray, encode


@dataclass(frozen=True)
class FeatureSchema:
    """Mirrors FoundationModel.spec.data.featureSchema."""

    userField: str = "user_id"
    itemField: str = "item_id"
    timestampField: str = "timestamp"
    actionField: str | None = "rating"
    contextFields: tuple[str, ...] = field(default_factory=tuple)


class SchemaError(ValueError):
    """The file does not have the columns the feature schema names."""


def load_table(path: str | Path, schema: FeatureSchema = FeatureSchema(), fmt: str | None = None) -> EventLog:
    path = Path(path)
    fmt = fmt or ("parquet" if path.suffix in (".parquet", ".pq") else "csv")
    frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    required = [schema.userField, schema.itemField, schema.timestampField]
    if schema.actionField:
        required.append(schema.actionField)
    missing = [c for c in (*required, *schema.contextFields) if c not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: columns {missing} named by spec.data.featureSchema are missing; "
                          f"the file has {list(frame.columns)}. Fix featureSchema or the file.")
    unknown = [c for c in schema.contextFields if c not in CONTEXT_FIELDS]
    if unknown:
        raise SchemaError(f"spec.data.featureSchema.contextFields {unknown} are not context fields; use {list(CONTEXT_FIELDS)}")
    user, user_ids = encode(frame[schema.userField].astype(str).to_numpy())
    item, item_ids = encode(frame[schema.itemField].astype(str).to_numpy())
    ts_col = frame[schema.timestampField]
    ts = _timestamps(ts_col, path, schema.timestampField)
    action_vocab: tuple[str, ...] = ()
    if schema.actionField:
        action, action_vocab = encode(frame[schema.actionField].astype(str).to_numpy())
    else:
        action = np.zeros(len(frame), dtype=np.int64)
    encoded = {c: encode(frame[c].astype(str).to_numpy()) for c in schema.contextFields}
    return EventLog(user=user, item=item, timestamp=ts, action=action, context={c: e[0] for c, e in encoded.items()},
                    user_ids=user_ids, item_ids=item_ids, n_actions=len(action_vocab), action_ids=action_vocab,
                    context_ids={c: e[1] for c, e in encoded.items()}, source=str(path)).sorted()


def _timestamps(col: pd.Series, path: Path, name: str) -> IntArray:
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all():
        as_int: IntArray = numeric.to_numpy().astype(np.int64)
        return as_int
    parsed = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
    if parsed.isna().any():
        bad = col[parsed.isna()].iloc[0]
        raise SchemaError(f"{path}: column {name!r} has a value that is neither epoch seconds nor a date: {bad!r}")
    # Resolution-independent (pandas 3 may store microseconds): whole seconds since the epoch.
    seconds: IntArray = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
    return seconds
