"""Shared building blocks: object metadata of a kind, conditions, resources, training settings."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "fmops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "fmops"

# Go-style durations as Kubernetes users write them: 30s, 5m, 1h30m, 250ms.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Model versions are assigned by the operator: v1, v2, ...
MODEL_VERSION_PATTERN = r"^v[1-9][0-9]*$"

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32, examples=["30s", "5m", "1h"])]
Name = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
ModelVersion = Annotated[str, Field(pattern=MODEL_VERSION_PATTERN, max_length=16)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, max_length=64)]
ShortText = Annotated[str, Field(max_length=256)]
Message = Annotated[str, Field(max_length=4096)]
# CPU/memory/GPU amounts: Kubernetes quantities such as 500m, 4Gi or 2.
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"}),
]


class ApiModel(BaseModel):
    """Base for every API object: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)


class Condition(ApiModel):
    """A Kubernetes-style condition (see metav1.Condition)."""

    type: Annotated[str, Field(max_length=316, description="Condition type, e.g. Accepted, ResolvedRefs, Ready.")]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024, description="CamelCase machine-readable reason.")]
    message: Annotated[str, Field(max_length=32768, description="Human-readable explanation, naming the field and the fix.")] = ""
    lastTransitionTime: Timestamp
    observedGeneration: Annotated[int, Field(ge=0)] | None = None


class ResourceRequirements(ApiModel):
    """Compute resources for a training step or a serving replica (same shape as a container's)."""

    requests: Annotated[dict[str, Quantity], Field(max_length=16)] = Field(default_factory=dict)
    limits: Annotated[dict[str, Quantity], Field(max_length=16)] = Field(default_factory=dict)


class GPUResources(ApiModel):
    """Where and on how much hardware a training Workflow runs."""

    gpus: Annotated[int, Field(ge=0, le=64, description="GPUs per node; 0 trains on CPU.")] = 0
    nodes: Annotated[int, Field(ge=1, le=64, description="Nodes for torchrun; more than 1 needs GPUs.")] = 1
    gpuResourceName: Annotated[str, Field(max_length=128, description="Extended resource name of the GPU.")] = "nvidia.com/gpu"
    nodeSelector: Annotated[dict[str, Annotated[str, Field(max_length=253)]], Field(max_length=16)] = Field(default_factory=dict)
    cpu: Quantity = "2"
    memory: Quantity = "8Gi"

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.nodes == 1 || self.gpus >= 1",
                    "message": "multi-node training (resources.nodes > 1) needs resources.gpus >= 1",
                    "fieldPath": ".nodes",
                }
            ]
        }
    )


class TrainingSettings(ApiModel):
    """Optimisation settings shared by pre-training and adapter fine-tuning."""

    epochs: Annotated[int, Field(ge=1, le=10000)] = 20
    batchSize: Annotated[int, Field(ge=1, le=65536)] = 128
    learningRate: Annotated[float, Field(gt=0, le=1)] = 0.001
    weightDecay: Annotated[float, Field(ge=0, le=1)] = 0.0
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 on GPUs that support it, fp32 on CPU."
    )


class ObjectRef(ApiModel):
    """A reference to an object in the same namespace."""

    name: Name


class KindInfo(BaseModel):
    """How one kind appears to kubectl: names, short names, printer columns."""

    kind: str
    plural: str
    singular: str
    shortNames: list[str]
    printerColumns: list[dict[str, Any]]


class CustomResource(ApiModel):
    """A whole object of one of our kinds (apiVersion, kind, metadata, spec, status)."""

    info: ClassVar[KindInfo]

    apiVersion: Literal["fmops.dev/v1alpha1"] = "fmops.dev/v1alpha1"
    kind: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid")
