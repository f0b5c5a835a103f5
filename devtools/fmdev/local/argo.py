"""The real Argo workflow-controller (built from its Go module), run beside the node.

It runs out of cluster with the admin kubeconfig, watching every namespace. Workflow steps are real
pods on the node; their executor is `argoexec` built from the same module, in an image built here.
There is no kube-proxy, so the executor finds the API server through KUBERNETES_SERVICE_HOST/PORT
set in the controller's ConfigMap (the API server's address on the node bridge).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import yaml

from fmdev.local import images, volumes
from fmdev.local.common import REPO, binary, free_port
from fmdev.local.handle import Handle
from fmdev.local.node import Node


NAMESPACE = "argo"
EXECUTOR_ROLE = "fmop-argo-executor"


def controller_config(api_host: str, api_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "workflow-controller-configmap", "namespace": NAMESPACE},
        "data": {
            "executor": yaml.safe_dump({
                "imagePullPolicy": "IfNotPresent",
                "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": api_host},
                        {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)}],
            }),
            "metricsConfig": yaml.safe_dump({"enabled": True, "port": metrics_port, "secure": False}),
        },
    }


def executor_role() -> dict[str, Any]:
    """What argoexec does with its pod's ServiceAccount: report step results (and read its pod)."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": EXECUTOR_ROLE},
            "rules": [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]},
                      {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "patch"]}]}


def install_training(cluster: Handle, namespace: str) -> list[str]:
    """What a namespace needs to run the operator's training Workflows: the repository's WorkflowTemplates,
    the executor's RoleBinding and the models volume. Returns the templates' names."""
    templates = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "workflows").glob("*.yaml"))]
    for t in templates:
        t["metadata"]["namespace"] = namespace
    cluster.apply([*templates, executor_binding(namespace)], "WorkflowTemplates and the Argo executor's RoleBinding")
    volumes.models_volume(cluster, namespace)
    return [t["metadata"]["name"] for t in templates]


def executor_binding(namespace: str, service_account: str = "default") -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": f"{EXECUTOR_ROLE}-{service_account}", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": EXECUTOR_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]}


def start(cluster: Handle, node: Node) -> str:
    refs = images.ensure(node, ["argoexec", "base"], log=cluster.log)
    api = urlparse(cluster.server)
    metrics_port = free_port()
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                   controller_config(str(api.hostname), int(api.port or 443), metrics_port), executor_role()],
                  "Argo namespace, controller ConfigMap and executor ClusterRole")
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path), "LEADER_ELECTION_DISABLE": "true"}
    cluster.sup.spawn("workflow-controller", [
        binary("workflow-controller"), f"--kubeconfig={cluster.kubeconfig_path}", f"--namespace={NAMESPACE}",
        f"--executor-image={refs['argoexec']}", "--executor-image-pull-policy=IfNotPresent",
        "--workflow-workers=4", "--pod-cleanup-workers=2", "--loglevel=info",
    ], env=env)
    cluster.sup.check_alive("workflow-controller")
    return f"workflow-controller (namespace {NAMESPACE}, all namespaces watched), executor {refs['argoexec']}, step image {refs['base']}"
