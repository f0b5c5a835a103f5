"""The pydantic types accept the examples and reject what the server would reject."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fmop.api import FoundationModel, Rollout, TaskAdapter
from tests.conftest import load_example

KIND = {"FoundationModel": FoundationModel, "TaskAdapter": TaskAdapter, "Rollout": Rollout}


@pytest.mark.parametrize("name", ["foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml"])
def test_examples_parse(name: str) -> None:
    obj = load_example(name)
    parsed = KIND[obj["kind"]].model_validate(obj)
    assert parsed.metadata["name"] == obj["metadata"]["name"]


def test_unknown_field_is_an_error() -> None:
    obj: dict[str, Any] = load_example("rollout.yaml")
    obj["spec"]["strategy"]["stepz"] = []
    with pytest.raises(ValidationError, match="stepz"):
        Rollout.model_validate(obj)


@pytest.mark.parametrize("bad", ["5 minutes", "5", "m5", "-1s"])
def test_durations_are_go_style(bad: str) -> None:
    obj = load_example("rollout.yaml")
    obj["spec"]["strategy"]["steps"][3]["pause"]["duration"] = bad
    with pytest.raises(ValidationError, match="pause.duration"):
        Rollout.model_validate(obj)


@pytest.mark.parametrize("good", ["result < 0.01", "result>=1e-3", "result == 0", "result != -2.5"])
def test_analysis_conditions_accept_the_small_grammar(good: str) -> None:
    obj = load_example("rollout.yaml")
    obj["spec"]["analysis"]["metrics"][0]["successCondition"] = good
    Rollout.model_validate(obj)


def test_default_spec_sections() -> None:
    fm = FoundationModel.model_validate({"kind": "FoundationModel", "metadata": {"name": "m"}, "spec": {"data": {"source": "synthetic"}}})
    assert fm.spec.objectives[0].type == "nextItem"
    assert fm.spec.training.precision == "auto"
    assert fm.spec.resources.gpus == 0


def test_rollout_status_written_before_the_engine_still_parses() -> None:
    """Objects whose status the operator wrote before the engine existed (phase and conditions only) stay valid."""
    from fmop.api.rollout import RolloutStatus

    old = {"phase": "Pending", "observedGeneration": 1, "message": "waiting",
           "conditions": [{"type": "Ready", "status": "False", "reason": "NotServing", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    status = RolloutStatus.model_validate(old)
    assert status.stable is None and status.canary is None and status.handledAlerts == [] and status.heldSince is None
    assert RolloutStatus.model_validate({"phase": "Shadowing", "currentStepIndex": -1}).phase == "Shadowing"


def test_keep_warm_defaults_and_is_a_duration() -> None:
    obj = load_example("rollout.yaml")
    assert Rollout.model_validate(obj).spec.strategy.keepWarm == "10m"
    obj["spec"]["strategy"]["keepWarm"] = "ten minutes"
    with pytest.raises(ValidationError, match="strategy.keepWarm"):
        Rollout.model_validate(obj)
