"""Go-style durations and RFC 3339 timestamps, as the Rollout's spec and status write them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """'1h30m' -> 1:30:00. The API types already reject anything else (DURATION_PATTERN)."""
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    return timedelta(seconds=sum(float(n) * _UNIT[u] for n, u in parts))


def utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone; pass an aware datetime (UTC)")
    return moment.astimezone(UTC)


def ts(moment: datetime) -> str:
    """RFC 3339 in UTC; sub-second precision only when there is some, so round trips are exact."""
    spec = "microseconds" if moment.microsecond else "seconds"
    return utc(moment).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_ts(text: str) -> datetime:
    return utc(datetime.fromisoformat(text))
