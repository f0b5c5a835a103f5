"""The rollout engine: `decide(spec, status, observations, now) -> Decision`, pure, plus the data it speaks.

Handlers read Observations, call decide, patch the Decision's status once and carry out its actions.
"""

from fmop.rollout.engine import decide
from fmop.rollout.types import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    Action,
    Alert,
    Decision,
    EmitEvent,
    EnsureInferenceService,
    InferenceServiceState,
    Measure,
    Measurement,
    ModelRef,
    Observations,
    ObservedTraffic,
    RecordHistory,
    RemoveInferenceService,
    SetTraffic,
    SplitSample,
)
from fmop.rollout.verdicts import split_within_sigma

__all__ = [
    "ABORT_ANNOTATION",
    "PROMOTE_ANNOTATION",
    "RETRY_ANNOTATION",
    "Action",
    "Alert",
    "Decision",
    "EmitEvent",
    "EnsureInferenceService",
    "InferenceServiceState",
    "Measure",
    "Measurement",
    "ModelRef",
    "Observations",
    "ObservedTraffic",
    "RecordHistory",
    "RemoveInferenceService",
    "SetTraffic",
    "SplitSample",
    "decide",
    "split_within_sigma",
]
