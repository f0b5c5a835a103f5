"""The real KServe controller manager (built from its Go module), run beside the node.

It runs out of cluster with the admin kubeconfig, in the Standard (raw Deployment) mode with ingress
creation off (the operator owns traffic). Its admission webhooks are registered exactly as KServe's
own manifests register them, pointed at the process's webhook port, so InferenceServices are
defaulted and validated and predictor pods get their model volume as on a real cluster. The Triton
ClusterServingRuntime is KServe's own, with the image built here (Triton from nvidia-pytriton plus
fmrec). Models reach pods through a `pvc://` storageUri: a hostPath PersistentVolume per namespace,
all onto one directory, so what a training step writes is what a predictor serves.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fmop.local import images, pki
from fmop.local.common import KSERVE_CONFIG, ClusterError, binary, free_port, wait_http
from fmop.local.node import NODE_IP, Node

if TYPE_CHECKING:
    from fmop.local.cluster import LocalCluster

NAMESPACE = "kserve"
RUNTIME = "kserve-tritonserver"
MODELS_CLAIM = "fmop-models"


def _config_file(name: str) -> Path:
    path = KSERVE_CONFIG / name
    if not path.exists():
        raise ClusterError(f"{path} is missing: run `make setup` (hack/build-tools.sh copies KServe's config from its module)")
    return path


def configmap() -> dict[str, Any]:
    """KServe's inferenceservice-config, set to Standard (raw Deployment) mode without ingress."""
    cm: dict[str, Any] = yaml.safe_load(_config_file("inferenceservice.yaml").read_text())
    cm["metadata"]["namespace"] = NAMESPACE
    data = cm["data"]
    data.pop("_example", None)
    data["deploy"] = json.dumps({"defaultDeploymentMode": "Standard"})
    ingress = json.loads(data["ingress"])
    ingress.update(disableIngressCreation=True, ingressDomain="fmop.local")
    data["ingress"] = json.dumps(ingress)
    return cm


def webhooks(url: str, ca: bytes) -> list[dict[str, Any]]:
    """KServe's own webhook registrations, with the service reference replaced by the local URL."""
    out = []
    for doc in yaml.safe_load_all(_config_file("manifests.yaml").read_text()):
        if not doc:
            continue
        doc["metadata"].pop("creationTimestamp", None)
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": base64.b64encode(ca).decode()}
        out.append(doc)
    return out


def serving_runtime(image: str) -> dict[str, Any]:
    """KServe's Triton ClusterServingRuntime with our image and requests sized for a small node."""
    rt: dict[str, Any] = yaml.safe_load(_config_file("kserve-tritonserver.yaml").read_text())
    container = rt["spec"]["containers"][0]
    container["image"] = image
    container["imagePullPolicy"] = "IfNotPresent"
    # Latency quantiles per pod (nv_inference_request_summary_us): the p99 analysis check and alert read them.
    container["args"].append("--metrics-config=summary_latencies=true")
    container["resources"] = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "3Gi"}}
    container.setdefault("env", []).append({"name": "OMP_NUM_THREADS", "value": "1"})
    return rt


def models_volume(cluster: LocalCluster, namespace: str) -> None:
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


def models_dir(cluster: LocalCluster) -> Path:
    path = cluster.workdir / "models"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)  # predictor pods run as uid 1000, training steps as root
    return path


def start(cluster: LocalCluster, node: Node) -> str:
    refs = images.ensure(node, ["fmrec"], log=cluster.log)
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {"control-plane": "kserve-controller-manager"}}},
                   configmap()], "KServe namespace and inferenceservice-config")
    tmp = cluster.workdir / "kserve-tmp"
    certs = tmp / "k8s-webhook-server" / "serving-certs"
    certs.mkdir(parents=True, exist_ok=True)
    crt, key = pki.issue(cluster.plane.pki, "kserve-webhook", "kserve-webhook", ips=("127.0.0.1", NODE_IP))
    (certs / "tls.crt").write_bytes(crt.read_bytes())
    (certs / "tls.key").write_bytes(key.read_bytes())
    webhook_port, metrics_port, probe_port = free_port(), free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path), "POD_NAMESPACE": NAMESPACE,
           "TMPDIR": str(tmp)}  # controller-runtime reads its webhook certificate from $TMPDIR/k8s-webhook-server
    cluster.sup.spawn("kserve-manager", [
        binary("kserve-manager"), f"--metrics-addr=127.0.0.1:{metrics_port}", f"--health-probe-addr=127.0.0.1:{probe_port}",
        f"--webhook-port={webhook_port}", "--leader-elect=false", "--zap-log-level=info",
    ], env=env)
    wait_http(f"http://127.0.0.1:{probe_port}/readyz", 120, lambda b: True, "KServe controller manager",
              alive=lambda: cluster.sup.check_alive("kserve-manager"))
    url = f"https://127.0.0.1:{webhook_port}"
    cluster.apply(webhooks(url, cluster.ca_file.read_bytes()), "KServe webhook configurations")
    cluster.apply([serving_runtime(refs["fmrec"])], "the Triton ClusterServingRuntime")  # goes through KServe's validating webhook
    models_volume(cluster, "default")
    return f"controller manager (webhooks {url}, metrics 127.0.0.1:{metrics_port}), runtime {RUNTIME} = {refs['fmrec']}"
