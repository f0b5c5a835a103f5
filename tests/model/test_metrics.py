"""The served model's metrics, against a stand-in for Triton's MetricFamily (the real /metrics
endpoint is checked in tests/integration/test_triton.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fmrec.serving.infer import Recommendation
from fmrec.serving.metrics import DEFAULT_SCORE_BUCKETS, ServingMetrics, score_buckets


class FakeMetric:
    def __init__(self, labels: dict[str, str], buckets: list[float] | None = None) -> None:
        self.labels, self.buckets, self.value, self.observed = labels, buckets, 0.0, []  # type: ignore[var-annotated]

    def increment(self, v: float) -> None:
        self.value += v

    def observe(self, v: float) -> None:
        self.observed.append(v)


class FakeFamily:
    COUNTER, HISTOGRAM = "counter", "histogram"
    made: list[tuple[str, FakeMetric]] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> FakeMetric:  # noqa: N802 - Triton's name
        assert (buckets is not None) == (self.kind == "histogram"), "Triton wants buckets for histograms only"
        m = FakeMetric(labels, buckets)
        FakeFamily.made.append((self.name, m))
        return m


class FakePb:
    MetricFamily = FakeFamily


def rec(task: str, codes: list[int], top: float, unknown: dict[str, int], events: int = 5) -> Recommendation:
    c = np.array(codes, dtype=np.int64)
    return Recommendation(items=np.array([str(x) for x in codes], dtype=object), codes=c,
                          scores=np.array([top - i for i in range(len(codes))], dtype=np.float32),
                          user=np.zeros(2, np.float32), task=task, events=events, unknown=unknown)


def series(name: str, **labels: str) -> float:
    return sum(m.value for n, m in FakeFamily.made if n == name and labels.items() <= m.labels.items())


def test_each_task_gets_its_own_deciles_scores_and_unknown_counts() -> None:
    FakeFamily.made = []
    deciles = np.array([0, 1, 1, 5, 10], dtype=np.int64)  # item code -> popularity decile
    m = ServingMetrics(FakePb(), "fmrec", "1", {"fm": (0.0, 1.0), "liked": (2.0, 3.0)}, deciles)
    assert len([x for n, x in FakeFamily.made if n == "fmrec_recommended_items_total"]) == 2 * 10  # all series up front
    m.record([rec("fm", [1, 2, 3], 0.5, {"item": 2}), rec("liked", [4, 3, 0], 2.5, {"action": 1}), rec("fm", [2, 4, 1], 1.5, {})])
    assert series("fmrec_recommended_items_total", task="fm", decile="1") == 4
    assert series("fmrec_recommended_items_total", task="fm", decile="5") == 1
    assert series("fmrec_recommended_items_total", task="fm", decile="10") == 1
    assert series("fmrec_recommended_items_total", task="liked") == 2  # code 0 (fewer items than K) is no item
    assert series("fmrec_unknown_values_total", task="fm", field="item") == 2
    assert series("fmrec_unknown_values_total", task="liked", field="action") == 1
    assert series("fmrec_unknown_values_total", task="liked", field="item") == 0
    assert series("fmrec_history_events_total", task="fm") == 10
    tops = {m.labels["task"]: (m.observed, m.buckets) for n, m in FakeFamily.made if n == "fmrec_top_score"}
    assert tops == {"fm": ([0.5, 1.5], [0.0, 1.0]), "liked": ([2.5], [2.0, 3.0])}


@pytest.mark.parametrize(("deciles", "want"), [
    (None, DEFAULT_SCORE_BUCKETS),
    ([], DEFAULT_SCORE_BUCKETS),
    ([1.23456, 1.23456, 0.5, float("nan")], (0.5, 1.235)),
], ids=["none-recorded", "empty", "rounded-deduplicated-sorted"])
def test_score_buckets(deciles: Any, want: tuple[float, ...]) -> None:
    assert score_buckets(deciles) == want
