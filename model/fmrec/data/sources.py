"""Name a data source in one string (CLI flags, checkpoint metadata) and load it as an EventLog."""

from __future__ import annotations

from fmrec.data.schema import EventLog


def load_data(spec: str) -> EventLog:
    """movielens100k | synthetic[:EVENTS] | parquet:PATH | csv:PATH | a .parquet/.csv path."""
    kind, _, arg = spec.partition(":")
    if kind == "movielens100k":
        from fmrec.data.movielens import load_ml100k
        return load_ml100k()
    if kind == "synthetic":
        from fmrec.data.synthetic import generate
        n = int(float(arg)) if arg else 1_000_000
        return generate(n_events=n, n_users=max(1000, n // 50), n_items=max(1000, n // 20))
    from fmrec.data.tabular import load_table
    if kind in ("parquet", "csv"):
        return load_table(arg, fmt=kind)
    if spec.endswith((".parquet", ".csv")):
        return load_table(spec)
    raise ValueError(f"--data {spec!r}: use movielens100k, synthetic[:EVENTS], parquet:PATH or csv:PATH")
