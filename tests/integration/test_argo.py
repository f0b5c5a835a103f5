"""The real Argo workflow-controller runs a Workflow from workflows/ as pods on the local node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fmdev.local import argo, images

from .helpers import wait_for

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def test_two_step_workflow_runs_as_pods_and_passes_outputs(cluster: Any, namespace: str) -> None:
    template = yaml.safe_load((WORKFLOWS / "node-check.yaml").read_text())
    template["metadata"]["namespace"] = namespace
    cluster.apply([template, argo.executor_binding(namespace)], "node-check WorkflowTemplate")
    wf = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
          "metadata": {"generateName": "node-check-", "namespace": namespace},
          "spec": {"workflowTemplateRef": {"name": "fmop-node-check"},
                   "arguments": {"parameters": [{"name": "image", "value": images.ref("base")}]}}}
    name = cluster.kubectl("create", "-f", "-", "-o", "jsonpath={.metadata.name}", input=json.dumps(wf)).stdout

    def finished() -> dict[str, Any] | None:
        obj: dict[str, Any] = json.loads(cluster.kubectl("get", "workflow", name, "-n", namespace, "-o", "json").stdout)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed", "Error") else None
    done = wait_for(finished, 240, f"workflow {name} to finish", interval=1)
    nodes = done["status"]["nodes"]
    assert done["status"]["phase"] == "Succeeded", (done["status"].get("message"), cluster.log_tail("workflow-controller"))

    pods = {n["displayName"]: n for n in nodes.values() if n["type"] == "Pod"}
    assert set(pods) == {"probe", "verify"}
    report = json.loads(pods["probe"]["outputs"]["parameters"][0]["value"])
    assert report["python"].startswith("3.11")
    assert pods["verify"]["inputs"]["parameters"][0]["value"] == pods["probe"]["outputs"]["parameters"][0]["value"]
    # real pods ran on the node: the step's own log, read through the kubelet
    logs = cluster.kubectl("logs", "-n", namespace, "-l", f"workflows.argoproj.io/workflow={name}", "-c", "main", "--prefix").stdout
    assert "verified: 3.11" in logs and report["pod"] in logs, logs
