"""One Argo Workflow per version, rendered from a FoundationModel or TaskAdapter spec (pure).

The Workflow names a WorkflowTemplate from workflows/ (`fmop-foundation-model`, `fmop-task-adapter`)
and passes the spec as parameters; hardware (CPU/memory requests, GPU limits, tolerations, node
selector) goes into the Workflow's own podSpecPatch/tolerations/nodeSelector so the templates stay
the same on a laptop and on a GPU cluster. Files live on the `fmop-models` PersistentVolumeClaim
under `<namespace>/<plural>/<name>/<version>/`, so a version's Triton export is the `pvc://` storageUri
an InferenceService serves.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from hera.workflows.models import (
    Arguments,
    ObjectMeta,
    OwnerReference,
    Parameter,
    Toleration,
    Workflow,
    WorkflowSpec,
    WorkflowTemplateRef,
)

from fmop.api.common import API_VERSION, GROUP
from fmop.api.common import GPUResources
from fmop.api.foundationmodel import FoundationModel
from fmop.api.taskadapter import BottleneckConfig, DistilledConfig, LoRAConfig, TaskAdapter
from fmop.kinds import FOUNDATION_MODEL, TASK_ADAPTER, WORKFLOW

MODELS_CLAIM = "fmop-models"  # the claim the templates mount; its one definition (the local cluster's volume imports it)
FM_TEMPLATE = "fmop-foundation-model"
TA_TEMPLATE = "fmop-task-adapter"
WORKFLOW_API = WORKFLOW.api_version

LABEL_KIND = f"{GROUP}/kind"
LABEL_OWNER = f"{GROUP}/owner"
LABEL_VERSION = f"{GROUP}/version"
LABEL_GENERATION = f"{GROUP}/spec-generation"
LABEL_BASE = f"{GROUP}/base-version"
LABEL_DATA_REVISION = f"{GROUP}/data-revision"
# Set by whatever lands new data (an ETL job, a person): a new value trains a new version of the same spec.
DATA_REVISION_ANNOTATION = f"{GROUP}/data-revision"
MANAGED_BY = {"app.kubernetes.io/managed-by": "fm-operator", "app.kubernetes.io/part-of": "fm-operator"}


class RenderError(ValueError):
    """A spec the templates cannot run; the message names the field and the fix."""


@dataclass(frozen=True)
class Target:
    """Who the Workflow trains and which version: everything rendering needs besides the spec."""

    namespace: str
    name: str
    uid: str
    generation: int
    version: str
    data_revision: str = ""  # the fmops.dev/data-revision annotation this version trains on ("" when unset)


def data_revision_label(value: str) -> str:
    """The annotation's value as a label value: itself when it is one (a date, a partition id), else a hash."""
    if re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:16]


def workflow_name(name: str, version: str, generation: int, data_revision: str = "") -> str:
    """`<name>-<version>-g<generation>` (plus `-d<hash>` for a data revision), short enough for Argo's
    pod names and label values (63)."""
    suffix = f"-{version}-g{generation}" + (f"-d{hashlib.sha256(data_revision.encode()).hexdigest()[:6]}" if data_revision else "")
    return f"{name[:63 - len(suffix)].rstrip('-')}{suffix}"


def version_dir(fm: FoundationModel | None, plural: str, t: Target) -> str:
    """The version's folder on the models volume (relative to the claim's root)."""
    if fm is not None and fm.spec.artifactUri:
        uri = fm.spec.artifactUri
        prefix = f"pvc://{MODELS_CLAIM}/"
        if not uri.startswith(prefix) or not uri[len(prefix):].strip("/"):
            raise RenderError(f"spec.artifactUri {uri!r}: the training templates write to the {MODELS_CLAIM} volume; "
                              f"use {prefix}<folder>/ or remove artifactUri for the default {prefix}<namespace>/{plural}/<name>/")
        return f"{uri[len(prefix):].strip('/')}/{t.version}"
    return f"{t.namespace}/{plural}/{t.name}/{t.version}"


def pvc_uri(path: str) -> str:
    return f"pvc://{MODELS_CLAIM}/{path}"


def pvc_path(uri: str) -> str:
    """The folder a `pvc://fmop-models/...` URI names, relative to the claim's root."""
    prefix = f"pvc://{MODELS_CLAIM}/"
    if not uri.startswith(prefix):
        raise RenderError(f"{uri!r} is not on the {MODELS_CLAIM} volume; adapters fine-tune on versions trained by this operator")
    return uri[len(prefix):]


def _threads(cpu: int | str) -> int:
    """torch threads = whole CPUs requested (0: let torch choose), so steps do not oversubscribe."""
    text = str(cpu)
    return int(text) if text.isdigit() else 0


def _hardware(r: GPUResources) -> dict[str, Any]:
    """podSpecPatch, tolerations and nodeSelector for every step of the Workflow."""
    resources: dict[str, Any] = {"requests": {"cpu": str(r.cpu), "memory": str(r.memory)}, "limits": {"memory": str(r.memory)}}
    tolerations: list[Toleration] = []
    if r.gpus:
        resources["requests"][r.gpuResourceName] = str(r.gpus)
        resources["limits"][r.gpuResourceName] = str(r.gpus)
        tolerations.append(Toleration(key=r.gpuResourceName, operator="Exists", effect="NoSchedule"))
    patch = json.dumps({"containers": [{"name": "main", "resources": resources}]}, sort_keys=True)
    return {"pod_spec_patch": patch, "tolerations": tolerations or None, "node_selector": dict(r.nodeSelector) or None}


def _workflow(kind: str, plural: str, t: Target, template: str, params: dict[str, str], hardware: dict[str, Any],
              extra_labels: dict[str, str]) -> dict[str, Any]:
    labels = {**MANAGED_BY, LABEL_KIND: kind, LABEL_OWNER: t.name, LABEL_VERSION: t.version,
              LABEL_GENERATION: str(t.generation), **extra_labels}
    if t.data_revision:
        labels[LABEL_DATA_REVISION] = data_revision_label(t.data_revision)
    wf = Workflow(
        api_version=WORKFLOW_API,
        kind=WORKFLOW.kind,
        metadata=ObjectMeta(
            name=workflow_name(t.name, t.version, t.generation, t.data_revision),
            namespace=t.namespace,
            labels=labels,
            owner_references=[OwnerReference(api_version=API_VERSION, kind=kind, name=t.name, uid=t.uid,
                                             controller=True, block_owner_deletion=True)],
        ),
        spec=WorkflowSpec(
            workflow_template_ref=WorkflowTemplateRef(name=template),
            arguments=Arguments(parameters=[Parameter(name=k, value=v) for k, v in params.items()]),
            **hardware,
        ),
    )
    out: dict[str, Any] = wf.model_dump(by_alias=True, exclude_none=True, mode="json")
    return out


def render_foundation_model(fm: FoundationModel, t: Target, image: str) -> dict[str, Any]:
    """The Workflow that trains version t.version of fm (prepare data, pretrain, evaluate, export)."""
    s = fm.spec
    unsupported = [f"spec.objectives[{i}].loss sampledSoftmax" for i, o in enumerate(s.objectives) if o.loss == "sampledSoftmax"]
    if s.architecture.attention.type != "full":
        unsupported.append("spec.architecture.attention.type slidingWindow")
    if unsupported:
        raise RenderError(f"{', '.join(unsupported)}: the trainer (fmrec train) does not implement this yet; "
                          "use fullSoftmax and full attention")
    if s.data.source in ("parquet", "csv"):
        data = f"{s.data.source}:{s.data.uri}"
    elif s.data.source == "synthetic":
        data = f"synthetic:{s.data.syntheticEvents or 1_000_000}"
    else:
        data = "movielens100k"
    a, tr = s.architecture, s.training
    horizon = next((o.horizon for o in s.objectives if o.type == "multiToken" and o.horizon), 0)
    params = {
        "image": image,
        "version-dir": version_dir(fm, FOUNDATION_MODEL.plural, t),
        "data": data,
        "epochs": str(tr.epochs),
        "batch-size": str(tr.batchSize),
        "learning-rate": repr(tr.learningRate),
        "weight-decay": repr(tr.weightDecay),
        "window-stride": str(tr.windowStride or a.contextLength),
        "weight-average": repr(tr.weightAverage),
        "seed": str(tr.seed),
        "precision": tr.precision,
        "layers": str(a.layers),
        "width": str(a.width),
        "heads": str(a.heads),
        "context-length": str(a.contextLength),
        "dropout": repr(a.dropout),
        "item-id-dropout": repr(a.itemIdDropout),
        "event-fields": ",".join(a.eventFields),
        "objectives": ",".join(f"{o.type}={o.weight!r}" for o in s.objectives),
        "horizon": str(horizon),
        "nproc-per-node": str(max(1, s.resources.gpus)),
        "nnodes": str(s.resources.nodes),
        "gpu-resource": s.resources.gpuResourceName,
        "threads": str(_threads(s.resources.cpu)),
        "top-k": str(s.export.topK),
        "int8": str("tritonInt8" in s.export.formats).lower(),
        "embeddings": str("embeddings" in s.export.formats).lower(),
    }
    return _workflow(FOUNDATION_MODEL.kind, FOUNDATION_MODEL.plural, t, FM_TEMPLATE, params, _hardware(s.resources), {})


def fm_artifacts(fm: FoundationModel, t: Target) -> tuple[str, str]:
    """(artifactUri, checkpointUri) of a FoundationModel version: its Triton repository and checkpoint."""
    folder = version_dir(fm, FOUNDATION_MODEL.plural, t)
    return pvc_uri(f"{folder}/triton"), pvc_uri(f"{folder}/checkpoint")


def ta_artifact(t: Target) -> str:
    """A TaskAdapter version's Triton repository (FM + adapter)."""
    return pvc_uri(f"{version_dir(None, TASK_ADAPTER.plural, t)}/triton")


def _adapter_params(ta: TaskAdapter) -> dict[str, str]:
    """The adapter type and its own settings (the API's defaults where spec.adapter.<type> is not given), which the
    fine-tune step passes to `fmrec finetune` (--dim; --rank, --alpha; --layers, --width). Settings of other types
    are left out: the template's defaults fill them and finetune ignores them."""
    a = ta.spec.adapter
    if a.type == "lora":
        lora = a.lora or LoRAConfig()
        return {"adapter": a.type, "rank": str(lora.rank), "alpha": repr(lora.alpha)}
    if a.type == "distilled":
        distilled = a.distilled or DistilledConfig()
        return {"adapter": a.type, "layers": str(distilled.layers), "width": str(distilled.width)}
    return {"adapter": a.type, "dim": str((a.bottleneck or BottleneckConfig()).dim)}


def render_task_adapter(ta: TaskAdapter, t: Target, base_version: str, base_checkpoint_uri: str, image: str) -> dict[str, Any]:
    """The Workflow that fine-tunes adapter version t.version on FoundationModel version base_version."""
    s = ta.spec
    if s.task.data is not None:
        raise RenderError("spec.task.data: task-specific events are not supported by the fine-tune template yet; "
                          "remove task.data to fine-tune on the FoundationModel's data (optionally with task.slice)")
    slice_ = f"{s.task.slice.attribute}={','.join(s.task.slice.values)}" if s.task.slice else ""
    params = {
        "image": image,
        "version-dir": version_dir(None, TASK_ADAPTER.plural, t),
        "base-checkpoint": pvc_path(base_checkpoint_uri),
        "task": s.task.name,
        "slice": slice_,
        **_adapter_params(ta),
        "epochs": str(s.training.epochs),
        "batch-size": str(s.training.batchSize),
        "learning-rate": repr(s.training.learningRate),
        "weight-decay": repr(s.training.weightDecay),
        "seed": str(s.training.seed),
        "threads": str(_threads(s.resources.cpu)),
    }
    return _workflow(TASK_ADAPTER.kind, TASK_ADAPTER.plural, t, TA_TEMPLATE, params, _hardware(s.resources), {LABEL_BASE: base_version})
