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
from typing import Any

import yaml

from fmdev.local import images, pki, volumes
from fmdev.local.common import KSERVE_CONFIG, ClusterError, binary, free_port, wait_http
from fmdev.local.handle import Handle
from fmdev.local.node import NODE_IP, Node
from fmrec.serving.protocol import FORWARD_ARGS


NAMESPACE = "kserve"
RUNTIME = "kserve-tritonserver"


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
    ingress.update(disableIngressCreation=True, ingressDomain="fmdev")
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
    """KServe's Triton ClusterServingRuntime with our image, requests sized for a small node, latency
    quantiles and the bucket header forwarded to the models."""
    rt: dict[str, Any] = yaml.safe_load(_config_file("kserve-tritonserver.yaml").read_text())
    container = rt["spec"]["containers"][0]
    container["image"] = image
    container["imagePullPolicy"] = "IfNotPresent"
    # Latency quantiles per pod (nv_inference_request_summary_us): the p99 analysis check and alert read them.
    container["args"].append("--metrics-config=summary_latencies=true")
    # The bucket header (HTTP header, gRPC metadata) reaches the models as a request parameter, so each
    # revision counts its experiment exposures and outcomes (fmrec.serving.protocol, "Experiments").
    container["args"].extend(FORWARD_ARGS)
    container["resources"] = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "3Gi"}}
    container.setdefault("env", []).append({"name": "OMP_NUM_THREADS", "value": "1"})
    return rt


def start(cluster: Handle, node: Node) -> str:
    refs = images.ensure(node, ["fmrec"], log=cluster.log)
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {"control-plane": "kserve-controller-manager"}}},
                   configmap()], "KServe namespace and inferenceservice-config")
    tmp = cluster.workdir / "kserve-tmp"
    certs = tmp / "k8s-webhook-server" / "serving-certs"
    certs.mkdir(parents=True, exist_ok=True)
    crt, key = pki.issue(cluster.pki, "kserve-webhook", "kserve-webhook", ips=("127.0.0.1", NODE_IP))
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
    volumes.models_volume(cluster, "default")
    return f"controller manager (webhooks {url}, metrics 127.0.0.1:{metrics_port}), runtime {RUNTIME} = {refs['fmrec']}"
