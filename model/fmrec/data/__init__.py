"""The data contract: one event-log shape for every source (MovieLens, Parquet/CSV, synthetic)."""

from fmrec.data.schema import SCHEMA_VERSION, EventLog, ItemMeta, UserAttrs
from fmrec.data.split import LeaveOneOut, leave_one_out

__all__ = ["SCHEMA_VERSION", "EventLog", "ItemMeta", "UserAttrs", "LeaveOneOut", "leave_one_out"]
