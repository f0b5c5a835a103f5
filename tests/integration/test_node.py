"""The local node is a real, reasonably locked-down Kubernetes node: pods run on containerd, their
logs come back through the kubelet, in-cluster clients reach the API server over TLS at the bridge
address, and the kubelet refuses anonymous callers."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from fmdev.local import images
from fmdev.local.node import NODE_IP, NODE_NAME

from .helpers import wait_for

IN_CLUSTER_CHECK = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
url = "https://%s:%s/version" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "/token").read()})
print("version", json.load(urllib.request.urlopen(req, context=ctx))["gitVersion"])
"""


def test_node_is_ready_and_untainted(cluster: Any) -> None:
    node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert not node["spec"].get("taints")
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]


def test_pod_runs_logs_and_reaches_the_api_server(cluster: Any, namespace: str) -> None:
    port = cluster.server.rsplit(":", 1)[1]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": namespace},
           "spec": {"restartPolicy": "Never", "containers": [{
               "name": "main", "image": images.ref("base"), "imagePullPolicy": "Never",
               "command": ["python3", "-c", IN_CLUSTER_CHECK],
               # no kube-proxy: in-cluster clients are pointed at the API server's bridge address
               "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": NODE_IP}, {"name": "KUBERNETES_SERVICE_PORT", "value": port}]}]}}
    cluster.apply([pod], "probe pod")

    def phase() -> str | None:
        p = cluster.kubectl("get", "pod", "probe", "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
        return p if p in ("Succeeded", "Failed") else None
    assert wait_for(phase, 120, "probe pod to finish") == "Succeeded", cluster.kubectl("describe", "pod", "probe", "-n", namespace).stdout
    logs = cluster.kubectl("logs", "probe", "-n", namespace).stdout  # API server -> kubelet, x509 both ways
    assert "version v1.36.3" in logs


def _kubelet_get(cluster: Any, token: str | None) -> int:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"https://{NODE_IP}:{cluster.the_node.kubelet_port}/pods", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("not-a-token", 401), ("admin", 200)],
                         ids=["anonymous", "bad-token", "admin-token"])
def test_kubelet_authenticates_and_authorises_through_the_api_server(cluster: Any, token: str | None, status: int) -> None:
    assert _kubelet_get(cluster, cluster.token if token == "admin" else token) == status
