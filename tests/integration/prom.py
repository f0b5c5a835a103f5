"""Small helpers for tests that talk to a real Prometheus."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from typing import Any

from fmdev.local.monitoring import Monitoring


def promql(mon: Monitoring, query: str) -> list[dict[str, Any]]:
    url = f"{mon.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
        return result


def wait_scraped(mon: Monitoring, query: str, expected: float, timeout: float = 20) -> None:
    """Until Prometheus' newest sample of `query` (one number) equals `expected`."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        last = promql(mon, query)
        if len(last) == 1 and math.isclose(float(last[0]["value"][1]), expected):
            time.sleep(1.2)  # one more scrape, so rate() sees the new value at both ends of a step
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never showed {query} = {expected}; last answer {last}")
