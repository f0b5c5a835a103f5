"""TaskAdapter: a thin module fine-tuned for one task on a frozen FoundationModel version."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from fmop.api.common import (
    ApiModel,
    Condition,
    CustomResource,
    GPUResources,
    KindInfo,
    Message,
    ModelVersion,
    Name,
    ShortText,
    Timestamp,
    TrainingSettings,
)
from fmop.api.foundationmodel import VERSIONS_BY_KEY, DataSource, Objective


class FoundationModelRef(ApiModel):
    """Which FoundationModel, and which of its versions, the adapter is trained on."""

    name: Name
    version: ModelVersion | None = Field(None, description="Pinned version; required when versionPolicy is Pinned.")
    versionPolicy: Literal["Pinned", "FollowLatest"] = Field(
        "FollowLatest", description="FollowLatest retrains the adapter whenever the FoundationModel gets a new version."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.versionPolicy != 'Pinned' || has(self.version)",
                    "message": "foundationModel.version is required when foundationModel.versionPolicy is Pinned",
                    "fieldPath": ".version",
                },
                {
                    "rule": "self.versionPolicy != 'FollowLatest' || !has(self.version)",
                    "message": "foundationModel.version conflicts with versionPolicy FollowLatest: remove it or use Pinned",
                    "fieldPath": ".version",
                },
            ]
        }
    )


class DataSlice(ApiModel):
    """The users (or contexts) the task is about, e.g. region in [jp] or device in [tv]."""

    attribute: Literal["region", "ageBand", "gender", "occupation", "locale", "device", "page"]
    values: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=1, max_length=64)]


class TaskSpec(ApiModel):
    name: Name = Field(description="Task name, e.g. search, notifications, region-jp.")
    slice: DataSlice | None = None
    data: DataSource | None = Field(None, description="Task-specific events; defaults to the FoundationModel's data.")
    objectives: Annotated[list[Objective], Field(min_length=1, max_length=8)] = Field(
        default_factory=lambda: [Objective(type="nextItem")]
    )


class BottleneckConfig(ApiModel):
    dim: Annotated[int, Field(ge=1, le=4096)] = 16


class LoRAConfig(ApiModel):
    rank: Annotated[int, Field(ge=1, le=512)] = 8
    alpha: Annotated[float, Field(gt=0, le=1024)] = 16.0


class DistilledConfig(ApiModel):
    layers: Annotated[int, Field(ge=1, le=64)] = 1
    width: Annotated[int, Field(ge=8, le=16384)] = 32


class AdapterSettings(ApiModel):
    type: Literal["head", "bottleneck", "lora", "distilled"] = "bottleneck"
    bottleneck: BottleneckConfig | None = None
    lora: LoRAConfig | None = None
    distilled: DistilledConfig | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.{t}) || self.type == '{t}'",
                    "message": f"adapter.{t} settings only apply to adapter.type {t}",
                    "fieldPath": f".{t}",
                }
                for t in ("bottleneck", "lora", "distilled")
            ]
        }
    )


class TaskAdapterSpec(ApiModel):
    foundationModel: FoundationModelRef
    task: TaskSpec
    adapter: AdapterSettings = Field(default_factory=AdapterSettings)
    training: TrainingSettings = Field(default_factory=lambda: TrainingSettings(epochs=5))
    resources: GPUResources = Field(default_factory=GPUResources)
    versionHistoryLimit: Annotated[int, Field(ge=1, le=100)] = 10


class AdapterVersion(ApiModel):
    version: ModelVersion
    foundationModelVersion: ModelVersion
    artifactUri: Annotated[str, Field(max_length=2048)]
    metrics: Annotated[dict[str, float], Field(max_length=64)] = Field(default_factory=dict)
    workflow: ShortText = ""
    specGeneration: Annotated[int, Field(ge=0)] | None = None
    createdAt: Timestamp | None = None


class TaskAdapterStatus(ApiModel):
    phase: Literal["Pending", "Training", "Ready", "Failed"] = "Pending"
    observedGeneration: Annotated[int, Field(ge=0)] | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    baseVersion: ModelVersion | None = Field(None, description="FoundationModel version the latest adapter version is valid for.")
    latestVersion: ModelVersion | None = None
    workflowName: ShortText | None = None
    progress: ShortText | None = Field(None, description="Steps done of the fine-tune Workflow, e.g. 1/2.")
    versions: Annotated[list[AdapterVersion], Field(max_length=100, json_schema_extra=VERSIONS_BY_KEY)] = Field(default_factory=list)
    message: Message = ""


class TaskAdapter(CustomResource):
    """A thin task adapter on a frozen FoundationModel version."""

    info: ClassVar[KindInfo] = KindInfo(
        kind="TaskAdapter",
        plural="taskadapters",
        singular="taskadapter",
        shortNames=["ta", "adapter"],
        printerColumns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Task", "type": "string", "jsonPath": ".spec.task.name"},
            {"name": "Model", "type": "string", "jsonPath": ".spec.foundationModel.name"},
            {"name": "Base", "type": "string", "jsonPath": ".status.baseVersion", "description": "FoundationModel version it is valid for"},
            {"name": "Latest", "type": "string", "jsonPath": ".status.latestVersion"},
            {"name": "Type", "type": "string", "jsonPath": ".spec.adapter.type", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: Literal["TaskAdapter"] = "TaskAdapter"
    spec: TaskAdapterSpec
    status: TaskAdapterStatus | None = None
