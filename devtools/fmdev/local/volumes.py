"""The shared models volume: one folder on this machine, `<workdir>/models`, that training steps (Argo)
write to and predictor pods (KServe) read from, as the claim the operator's templates name
(fmop.training.render.MODELS_CLAIM): `pvc://fmop-models/<path>` is `<workdir>/models/<path>`."""

from __future__ import annotations

import os
from pathlib import Path

from fmdev.local.handle import Handle
from fmop.training.render import MODELS_CLAIM

__all__ = ["MODELS_CLAIM", "models_dir", "models_volume"]


def models_volume(cluster: Handle, namespace: str) -> None:
    """A PersistentVolumeClaim `fmop-models` in namespace, pre-bound to a hostPath volume onto the
    cluster's models directory. `pvc://fmop-models/<path>` then names <models dir>/<path>."""
    models = models_dir(cluster)
    pv_name = f"fmop-models-{namespace}"
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name, "labels": {"fmops.dev/models": "local"}},
          "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"], "persistentVolumeReclaimPolicy": "Retain",
                   "storageClassName": "fmop-local-models", "hostPath": {"path": str(models), "type": "Directory"},
                   "claimRef": {"namespace": namespace, "name": MODELS_CLAIM}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": MODELS_CLAIM, "namespace": namespace},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "fmop-local-models", "volumeName": pv_name,
                    "resources": {"requests": {"storage": "100Gi"}}}}
    # A namespace deleted and made again leaves its PersistentVolume Released, bound to the old claim's
    # uid, and a new claim never binds to it: make it anew (Retain: the files on the host stay).
    found = cluster.kubectl("get", "pv", pv_name, "-o", "jsonpath={.status.phase}", check=False)
    if found.returncode == 0 and found.stdout.strip() == "Released":
        cluster.kubectl("delete", "pv", pv_name, "--wait=true")
    cluster.apply([pv, pvc], f"models volume for namespace {namespace}")


def models_dir(cluster: Handle) -> Path:
    path = cluster.workdir / "models"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)  # predictor pods run as uid 1000, training steps as root
    return path
