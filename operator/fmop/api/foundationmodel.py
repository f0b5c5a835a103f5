"""FoundationModel: one transformer recommender trained on all interaction events."""

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
    ShortText,
    Timestamp,
    TrainingSettings,
)

EventField = Literal["item", "action", "timeGap", "hourOfDay", "dayOfWeek", "relativeTime", "device", "page", "locale"]
ExportFormat = Literal["tritonPython", "tritonInt8", "embeddings"]
FieldName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class FeatureSchema(ApiModel):
    """Which columns of the event log mean what (the data contract)."""

    userField: FieldName = "user_id"
    itemField: FieldName = "item_id"
    timestampField: FieldName = "timestamp"
    actionField: FieldName | None = Field("rating", description="Action type or rating column; empty if absent.")
    contextFields: Annotated[list[FieldName], Field(max_length=16)] = Field(
        default_factory=list, description="Optional context columns (device, page, locale) that exist in the data."
    )


class DataSource(ApiModel):
    """Where the interaction events come from."""

    source: Literal["movielens100k", "parquet", "csv", "synthetic"] = Field(
        description="movielens100k reads the copy shipped in an installed wheel; parquet/csv read spec.data.uri."
    )
    uri: Annotated[str, Field(max_length=2048, description="Event log location (s3://, gs://, file://); parquet and csv only.")] | None = None
    itemMetadataUri: Annotated[str, Field(max_length=2048)] | None = None
    userAttributesUri: Annotated[str, Field(max_length=2048)] | None = None
    syntheticEvents: Annotated[int, Field(ge=1000, le=10_000_000_000, description="Events to generate; synthetic only.")] | None = None
    featureSchema: FeatureSchema = Field(default_factory=FeatureSchema)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(self.source in ['parquet', 'csv']) || has(self.uri)",
                    "message": "data.uri is required when data.source is parquet or csv: point it at the event log",
                    "fieldPath": ".uri",
                },
                {
                    "rule": "self.source in ['parquet', 'csv'] || !has(self.uri)",
                    "message": "data.uri is only read for data.source parquet or csv: remove it or change the source",
                    "fieldPath": ".uri",
                },
                {
                    "rule": "self.source == 'synthetic' || !has(self.syntheticEvents)",
                    "message": "data.syntheticEvents only applies to data.source synthetic",
                    "fieldPath": ".syntheticEvents",
                },
            ]
        }
    )


class Attention(ApiModel):
    type: Literal["full", "slidingWindow"] = "full"
    window: Annotated[int, Field(ge=1, le=65536, description="Tokens each position attends to; slidingWindow only.")] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type == 'slidingWindow' ? has(self.window) : !has(self.window)",
                    "message": "attention.window is required for type slidingWindow and not allowed for type full",
                    "fieldPath": ".window",
                }
            ]
        }
    )


class Architecture(ApiModel):
    """Shape of the causal transformer."""

    layers: Annotated[int, Field(ge=1, le=64)] = 2
    width: Annotated[int, Field(ge=8, le=16384, description="Hidden size (d_model).")] = 64
    heads: Annotated[int, Field(ge=1, le=128)] = 2
    contextLength: Annotated[int, Field(ge=2, le=65536, description="Events of history per user state.")] = 50
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    itemIdDropout: Annotated[float, Field(ge=0, lt=1, description="Probability of hiding the ID embedding so content carries cold items.")] = 0.1
    eventFields: Annotated[list[EventField], Field(min_length=1, max_length=9)] = Field(
        default_factory=lambda: list[EventField](["item", "action", "timeGap"]),
        description="Fields embedded into each event token; relativeTime instead biases attention by the time between events (HSTU-style).",
    )
    attention: Attention = Field(default_factory=Attention)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.width % self.heads == 0",
                    "message": "architecture.width must be divisible by architecture.heads",
                    "fieldPath": ".width",
                },
                {
                    "rule": "'item' in self.eventFields",
                    "message": "architecture.eventFields must include item",
                    "fieldPath": ".eventFields",
                },
                {
                    "rule": "!has(self.attention.window) || self.attention.window < self.contextLength",
                    "message": "architecture.attention.window must be smaller than architecture.contextLength",
                    "fieldPath": ".attention.window",
                },
            ]
        }
    )


class Objective(ApiModel):
    """One training objective and its weight in the multi-task loss."""

    type: Literal["nextItem", "multiToken", "action", "genre"]
    weight: Annotated[float, Field(gt=0, le=100)] = 1.0
    loss: Literal["fullSoftmax", "sampledSoftmax"] = "fullSoftmax"
    negatives: Annotated[int, Field(ge=1, le=100000, description="Sampled negatives; sampledSoftmax only.")] | None = None
    horizon: Annotated[int, Field(ge=2, le=64, description="Future items predicted; multiToken only.")] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.loss != 'sampledSoftmax' || has(self.negatives)",
                    "message": "objectives[].negatives is required when loss is sampledSoftmax",
                    "fieldPath": ".negatives",
                },
                {
                    "rule": "self.type != 'multiToken' || has(self.horizon)",
                    "message": "objectives[].horizon is required for type multiToken",
                    "fieldPath": ".horizon",
                },
            ]
        }
    )


class ExportSettings(ApiModel):
    formats: Annotated[list[ExportFormat], Field(min_length=1, max_length=3)] = Field(
        default_factory=lambda: list[ExportFormat](["tritonPython"])
    )
    topK: Annotated[int, Field(ge=1, le=10000, description="Items returned per request by the served model.")] = 100


class QualityGate(ApiModel):
    """Offline quality a new version must keep to become latestVersion."""

    ndcgTolerance: Annotated[float, Field(ge=0, le=1, description=(
        "Largest relative NDCG@10 drop against the current latest version (0.02 = 2%); a version that drops more "
        "is recorded but not made latestVersion."))] = 0.02


class PretrainingSettings(TrainingSettings):
    """Optimisation settings of pre-training: the shared ones plus how windows are cut and weights averaged."""

    windowStride: Annotated[int, Field(ge=1, le=65536, description=(
        "Events between the ends of consecutive training windows over a long history; below "
        "architecture.contextLength the windows overlap (more training targets with context per epoch). "
        "Default: architecture.contextLength (no overlap)."))] | None = None
    weightAverage: Annotated[float, Field(ge=0, lt=1, description=(
        "Decay per step of an exponential moving average of the weights, evaluated and exported instead of "
        "the last weights; 0 = off, 0.99 = about the last 100 steps."))] = 0.0


class FoundationModelSpec(ApiModel):
    """What to train. Every change of spec trains a new version."""

    data: DataSource
    architecture: Architecture = Field(default_factory=Architecture)
    objectives: Annotated[list[Objective], Field(min_length=1, max_length=8)] = Field(
        default_factory=lambda: [Objective(type="nextItem")]
    )
    training: PretrainingSettings = Field(default_factory=PretrainingSettings)
    resources: GPUResources = Field(default_factory=GPUResources)
    export: ExportSettings = Field(default_factory=ExportSettings)
    artifactUri: Annotated[str, Field(max_length=2048, description="Prefix under which versions are written (s3://bucket/fm/, file:///models/).")] | None = None
    versionHistoryLimit: Annotated[int, Field(ge=1, le=100, description="Versions kept in status.")] = 10
    qualityGate: QualityGate = Field(default_factory=QualityGate)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.objectives.exists(o, o.type == 'nextItem')",
                    "message": "objectives must include type nextItem (the foundation model's main task)",
                    "fieldPath": ".objectives",
                },
                {
                    "rule": "self.objectives.all(o, self.objectives.exists_one(p, p.type == o.type))",
                    "message": "objectives must not list the same type twice",
                    "fieldPath": ".objectives",
                },
                {
                    "rule": "!has(self.training) || !has(self.training.windowStride) || !has(self.architecture) || "
                            "!has(self.architecture.contextLength) || self.training.windowStride <= self.architecture.contextLength",
                    "message": "training.windowStride must not exceed architecture.contextLength (windows would skip events)",
                    "fieldPath": ".training.windowStride",
                },
            ]
        }
    )


# status.versions is a list-map keyed by version: the API server keeps keys unique, and a writer other than the
# operator can add one entry with server-side apply (kubectl apply --server-side --subresource=status).
VERSIONS_BY_KEY = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["version"]}


class FoundationModelVersion(ApiModel):
    """One trained version: where it is and what it was trained on."""

    version: ModelVersion
    artifactUri: Annotated[str, Field(max_length=2048, description="The Triton model repository (a Rollout's storageUri).")]
    checkpointUri: Annotated[str, Field(max_length=2048, description="The trained model, read by adapter fine-tuning.")] | None = None
    gate: Literal["Passed", "HeldBack"] | None = Field(None, description="HeldBack: NDCG@10 regressed beyond spec.qualityGate.")
    dataFingerprint: ShortText = ""
    featureFingerprint: ShortText = ""
    dataRevision: ShortText = Field("", description="The fmops.dev/data-revision annotation it was trained on (empty: none set).")
    metrics: Annotated[dict[str, float], Field(max_length=64)] = Field(default_factory=dict)
    workflow: ShortText = ""
    specGeneration: Annotated[int, Field(ge=0)] | None = None
    createdAt: Timestamp | None = None


class FoundationModelStatus(ApiModel):
    phase: Literal["Pending", "Training", "Ready", "Failed"] = "Pending"
    observedGeneration: Annotated[int, Field(ge=0)] | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    workflowName: ShortText | None = None
    progress: ShortText | None = Field(None, description="Steps done of the training Workflow, e.g. 2/4.")
    latestVersion: ModelVersion | None = None
    versions: Annotated[list[FoundationModelVersion], Field(max_length=100, json_schema_extra=VERSIONS_BY_KEY)] = Field(default_factory=list)
    message: Message = ""


class FoundationModel(CustomResource):
    """A foundation recommender and every version trained from it."""

    info: ClassVar[KindInfo] = KindInfo(
        kind="FoundationModel",
        plural="foundationmodels",
        singular="foundationmodel",
        shortNames=["fm"],
        printerColumns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Latest", "type": "string", "jsonPath": ".status.latestVersion", "description": "Newest trained version"},
            {"name": "Data", "type": "string", "jsonPath": ".spec.data.source"},
            {"name": "Layers", "type": "integer", "jsonPath": ".spec.architecture.layers", "priority": 1},
            {"name": "Width", "type": "integer", "jsonPath": ".spec.architecture.width", "priority": 1},
            {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus", "priority": 1},
            {"name": "Workflow", "type": "string", "jsonPath": ".status.workflowName", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: Literal["FoundationModel"] = "FoundationModel"
    spec: FoundationModelSpec
    status: FoundationModelStatus | None = None
