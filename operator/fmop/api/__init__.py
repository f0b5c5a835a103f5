"""API types of the fmops.dev/v1alpha1 group.

The pydantic models here are the one source of truth: `crds/*.yaml` is generated from them
(`python -m fmop.crdgen`), and a test fails when the committed CRDs drift from these models.
Field names are camelCase because they are the Kubernetes field names users write.
"""

from fmop.api.common import GROUP, VERSION, Condition
from fmop.api.foundationmodel import FoundationModel, FoundationModelSpec, FoundationModelStatus
from fmop.api.rollout import Rollout, RolloutSpec, RolloutStatus
from fmop.api.taskadapter import TaskAdapter, TaskAdapterSpec, TaskAdapterStatus

KINDS = (FoundationModel, TaskAdapter, Rollout)

__all__ = [
    "GROUP",
    "VERSION",
    "KINDS",
    "Condition",
    "FoundationModel",
    "FoundationModelSpec",
    "FoundationModelStatus",
    "TaskAdapter",
    "TaskAdapterSpec",
    "TaskAdapterStatus",
    "Rollout",
    "RolloutSpec",
    "RolloutStatus",
]
