"""Every kind the operator reads or writes, as one typed reference: ours from the API types, the
third-party ones (Argo, KServe) in one small table, the core ones the adapter needs. Pure: no I/O.

The traffic providers describe their own kinds (providers/base.py `ObjectRef`, with their install hint).
"""

from __future__ import annotations

from dataclasses import dataclass

from fmop.api import FoundationModel, Rollout, TaskAdapter
from fmop.api.common import GROUP, VERSION, CustomResource


@dataclass(frozen=True)
class Kind:
    """group, version, plural and kind of one resource, and what to install when the API server lacks it."""

    group: str  # "" for the core group (pods, events)
    version: str
    plural: str
    kind: str
    install: str = ""  # the fix when the API server does not serve this kind

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """`<plural>.<group>`, as RBAC rules and kubectl name it (`pods` for the core group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def __str__(self) -> str:
        return self.resource


def of(model: type[CustomResource]) -> Kind:
    """The reference of one of our kinds, from its API type."""
    return Kind(GROUP, VERSION, model.info.plural, model.info.kind,
                install="install the fm-operator CRDs (crds/, or the Helm chart charts/fm-operator)")


FOUNDATION_MODEL = of(FoundationModel)
TASK_ADAPTER = of(TaskAdapter)
ROLLOUT = of(Rollout)

# Third-party kinds the operator writes itself (traffic kinds: see the providers).
WORKFLOW = Kind("argoproj.io", "v1alpha1", "workflows", "Workflow",
                install="install Argo Workflows (its CRDs, argoproj.io, and the workflow-controller)")
INFERENCE_SERVICE = Kind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService",
                         install="install KServe's CRDs (serving.kserve.io)")

# Core kinds the adapter touches: a failed training step's pod and its log, Events.
POD = Kind("", "v1", "pods", "Pod")
EVENT = Kind("", "v1", "events", "Event")

# Leader election (fmop.leader): the Lease two replicas hold in turn.
LEASE = Kind("coordination.k8s.io", "v1", "leases", "Lease")
