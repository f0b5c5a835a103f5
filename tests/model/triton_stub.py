"""A stand-in for triton_python_backend_utils (the module Triton's Python backend gives a model), for unit tests of
the served models' glue: tensors, per-request errors, responses, the model exception and custom metrics, as the
real module shapes them. The real server runs the same models in tests/integration/test_triton*.py."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy.typing as npt
import pytest


class FakeTensor:
    def __init__(self, name: str, array: npt.NDArray[Any]) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> npt.NDArray[Any]:
        return self.array


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        self.text, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: FakeError | None = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


class FakeModelException(Exception):
    pass


class FakeMetric:
    def __init__(self, labels: dict[str, str], buckets: list[float] | None) -> None:
        self.labels, self.buckets, self.value = labels, buckets, 0.0
        self.observed: list[float] = []

    def increment(self, v: float) -> None:
        self.value += v

    def observe(self, v: float) -> None:
        self.observed.append(v)


class FakeFamily:
    COUNTER, HISTOGRAM = "counter", "histogram"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.metrics: list[FakeMetric] = []

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> FakeMetric:  # noqa: N802 - Triton's name
        assert (buckets is not None) == (self.kind == "histogram"), "Triton wants buckets for histograms only"
        self.metrics.append(FakeMetric(labels, buckets))
        return self.metrics[-1]


def install(monkeypatch: pytest.MonkeyPatch, model_module: str) -> types.ModuleType:
    """Put the stand-in in sys.modules and forget `model_module`, so that importing it again binds to the stand-in."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = FakeTensor  # type: ignore[attr-defined]
    fake.TritonError = FakeError  # type: ignore[attr-defined]
    fake.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    fake.TritonModelException = FakeModelException  # type: ignore[attr-defined]
    fake.MetricFamily = FakeFamily  # type: ignore[attr-defined]
    fake.logged = []  # type: ignore[attr-defined]
    fake.Logger = types.SimpleNamespace(log_error=fake.logged.append)  # type: ignore[attr-defined]
    fake.get_input_tensor_by_name = lambda request, name: (  # type: ignore[attr-defined]
        FakeTensor(name, request[name]) if name in request else None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.delitem(sys.modules, model_module, raising=False)
    return fake
