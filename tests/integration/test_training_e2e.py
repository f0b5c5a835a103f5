"""End to end on the real node: the operator renders a FoundationModel's Workflow, the real Argo
controller runs it as pods in the locally built fmrec image, and status records version v1 with
metrics and a Triton export on the models volume (tiny model, one epoch); then the example
TaskAdapter fine-tunes on v1 the same way; and a two-node Workflow of the same template joins its
pretrain pods in one process group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from kubernetes import client

from fmdev.local import argo, images, volumes
from fmop.training.planner import plan
from tests.conftest import load_example
from tests.integration.helpers import GROUP, VERSION, chart_identity, get, rbac_denials, running_operator, wait_for



def test_operator_trains_a_tiny_foundation_model_through_argo(cluster: Any, api: Any, namespace: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    argo.install_training(cluster, namespace)

    fm = load_example("foundationmodel.yaml")
    fm["spec"]["architecture"].update(layers=1, width=16, heads=1, contextLength=20)
    fm["spec"]["training"].update(epochs=1, batchSize=256)
    fm["spec"]["resources"].update(cpu="1", memory="3Gi")
    fm["spec"]["export"] = {"formats": ["tritonPython"], "topK": 10}
    monkeypatch.setenv("FMOP_TRAINER_IMAGE", images.ref("fmrec"))
    # As the chart's ServiceAccount in namespaced mode (least privilege): it trains, fine-tunes and records versions
    # with nothing but the Role in this namespace, and is refused nothing.
    release = f"fmops-{namespace}"[:63]
    cluster.kubectl("create", "namespace", release)
    with (chart_identity(cluster, release, [namespace], tmp_path) as who,
          running_operator(who.kubeconfig, tmp_path / "operator.log", extra=[f"--namespaces={namespace}"]) as op):
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "foundationmodels", fm)
        training = wait_for(lambda: (get(api, "foundationmodels", namespace, "movielens").get("status") or {}).get("workflowName"),
                            60, "the training Workflow to be submitted")
        assert training == "movielens-v1-g1"

        def done() -> dict[str, Any] | None:
            status: dict[str, Any] = get(api, "foundationmodels", namespace, "movielens").get("status") or {}
            return status if status.get("phase") in ("Ready", "Failed") else None
        status = wait_for(done, 900, "the FoundationModel to finish training", interval=2)
        assert status["phase"] == "Ready", (status.get("message"), op.log()[-3000:], cluster.log_tail("workflow-controller"))

        # the example TaskAdapter (slice region us-9, a bottleneck) fine-tunes on v1 through the same
        # controller, and so do a LoRA and a distilled adapter of the same slice, all at once
        ta = load_example("taskadapter.yaml")
        ta["spec"]["training"] = {"epochs": 1}
        ta["spec"]["resources"] = {"cpu": "500m", "memory": "3Gi"}
        adapters = {"west-coast": ta}
        for name, adapter in (("west-coast-lora", {"type": "lora", "lora": {"rank": 4, "alpha": 8.0}}),
                              ("west-coast-small", {"type": "distilled", "distilled": {"layers": 1, "width": 16}})):
            other = yaml.safe_load(yaml.safe_dump(ta))
            other["metadata"]["name"] = other["spec"]["task"]["name"] = name
            other["spec"]["adapter"] = adapter
            adapters[name] = other
        for obj in adapters.values():
            client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, "taskadapters", obj)

        def adapted() -> dict[str, dict[str, Any]] | None:
            found = {n: get(api, "taskadapters", namespace, n).get("status") or {} for n in adapters}
            finished = all(s.get("phase") in ("Ready", "Failed") and s.get("workflowName") for s in found.values())
            return found if finished else None
        ta_statuses = wait_for(adapted, 900, "the TaskAdapters to finish fine-tuning", interval=2)
        failed = {n: s.get("message") for n, s in ta_statuses.items() if s["phase"] != "Ready"}
        assert not failed, (failed, op.log()[-3000:])

    assert status["latestVersion"] == "v1"
    [v1] = status["versions"]
    assert v1["artifactUri"] == f"pvc://fmop-models/{namespace}/foundationmodels/movielens/v1/triton"
    assert 0 < v1["metrics"]["NDCG@10"] <= v1["metrics"]["HR@10"] <= 1
    assert len(v1["dataFingerprint"]) >= 8 and v1["specGeneration"] == 1 and v1["workflow"] == training
    # the Triton repository is where a pvc:// storageUri serves it from
    repo = volumes.models_dir(cluster) / namespace / "foundationmodels" / "movielens" / "v1" / "triton"
    assert (repo / "fmrec" / "config.pbtxt").is_file(), sorted(str(p) for p in repo.parent.rglob("*"))[:50]
    wf = yaml.safe_load(cluster.kubectl("get", "workflow", training, "-n", namespace, "-o", "yaml").stdout)
    assert wf["metadata"]["ownerReferences"][0]["kind"] == "FoundationModel"
    steps = {n["displayName"].split("(")[0] for n in wf["status"]["nodes"].values() if n["type"] == "Pod"}  # retried: pretrain(0)
    assert steps == {"prepare-data", "pretrain", "evaluate", "export"}

    for name, want in (("west-coast", ("bottleneck", {"dim": 16})), ("west-coast-lora", ("lora", {"rank": 4, "alpha": 8.0})),
                       ("west-coast-small", ("distilled", {"layers": 1, "width": 16}))):
        ta_status = ta_statuses[name]
        [a1] = ta_status["versions"]
        assert (ta_status["latestVersion"], ta_status["baseVersion"], a1["foundationModelVersion"]) == ("v1", "v1", "v1")
        assert a1["metrics"]["testUsers"] > 0 and 0 <= a1["metrics"]["NDCG@10"] <= 1
        adapter_repo = volumes.models_dir(cluster) / namespace / "taskadapters" / name / "v1" / "triton" / "fmrec"
        files = list(adapter_repo.rglob(f"{name}.pt"))
        assert (adapter_repo / "config.pbtxt").is_file() and len(files) == 1, sorted(adapter_repo.rglob("*"))
        blob = torch.load(files[0], map_location="cpu", weights_only=True)  # the served file holds the adapter the spec names
        assert (blob["kind"], {k: blob["settings"].get(k) for k in want[1]}) == want, (name, blob["kind"], blob["settings"])
    denials = rbac_denials(op.log())
    assert not denials, f"the operator, as {who.username}, was refused:\n" + "\n".join(denials[:5])
    cluster.kubectl("delete", "namespace", release, "--wait=false", check=False)

def test_two_node_pretraining_joins_one_process_group_through_the_rendezvous_daemon(cluster: Any, namespace: str) -> None:
    """spec.resources.nodes 2 with one GPU each: the Workflow the operator renders runs a rendezvous
    daemon and one torchrun pod per node that find each other by the daemon's pod IP (the local node
    has no cluster DNS) and train one model together (gloo on CPU). The node advertises exactly two
    units of a stand-in GPU resource, so the Workflow can finish only if the daemon holds none:
    the Workflow's podSpecPatch gives every pod the training pod's GPUs, the daemon's own patch
    takes them away."""
    gpu = "fmops.dev/test-gpu"
    node = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout.strip()
    path = "/status/capacity/" + gpu.replace("/", "~1")
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=json", "-p",
                    json.dumps([{"op": "add", "path": path, "value": "2"}]))
    try:
        wait_for(lambda: json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout)["status"]["allocatable"].get(gpu) == "2",
                 60, f"node {node} to advertise 2 {gpu}")
        _train_on_two_nodes(cluster, namespace, gpu)
    finally:
        cluster.kubectl("patch", "node", node, "--subresource=status", "--type=json", "-p",
                        json.dumps([{"op": "remove", "path": path}]), check=False)


def _train_on_two_nodes(cluster: Any, namespace: str, gpu: str) -> None:
    argo.install_training(cluster, namespace)
    fm = load_example("foundationmodel.yaml")
    fm["metadata"].update(namespace=namespace, uid="00000000-0000-4000-8000-000000000002", generation=1)
    fm["spec"]["architecture"].update(layers=1, width=16, heads=1, contextLength=20)
    fm["spec"]["training"].update(epochs=2, batchSize=256)
    fm["spec"]["resources"].update(cpu="500m", memory="2Gi", gpus=1, nodes=2, gpuResourceName=gpu)
    fm["spec"]["export"] = {"formats": ["tritonPython"], "topK": 10}
    planned = plan(fm, [], "2026-01-01T00:00:00Z", image=images.ref("fmrec"))
    assert planned.create is not None
    wf = planned.create
    wf["metadata"].pop("ownerReferences")  # no FoundationModel object: the garbage collector would take it
    params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert (params["nnodes"], params["nproc-per-node"], params["gpu-resource"]) == ("2", "1", gpu)
    cluster.apply([wf], "a two-node training Workflow")
    name = wf["metadata"]["name"]

    def finished() -> dict[str, Any] | None:
        obj: dict[str, Any] = json.loads(cluster.kubectl("get", "workflow", name, "-n", namespace, "-o", "json").stdout)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed", "Error") else None
    done = wait_for(finished, 900, f"workflow {name} to finish", interval=2)
    selector = f"workflows.argoproj.io/workflow={name}"
    logs = cluster.kubectl("logs", "-n", namespace, "-l", selector, "-c", "main", "--prefix", "--tail=200", check=False).stdout
    assert done["status"]["phase"] == "Succeeded", (done["status"].get("message"), logs[-4000:], cluster.log_tail("workflow-controller"))
    pods = [n for n in done["status"]["nodes"].values() if n["type"] == "Pod"]
    by_template = sorted(n["templateName"] for n in pods)
    assert by_template == ["evaluate", "export", "prepare-data", "pretrain", "pretrain", "rendezvous"], by_template
    assert logs.count("on 2 x cpu") == 2, f"each node's process joins one world of 2 processes:\n{logs[-4000:]}"
    found = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"]
    requests = {p["metadata"]["annotations"]["workflows.argoproj.io/node-name"].split(".")[-1]:
                next(c for c in p["spec"]["containers"] if c["name"] == "main")["resources"]["requests"] for p in found}
    daemon = next(r for n, r in requests.items() if n.startswith("rendezvous"))
    assert gpu not in daemon and daemon["cpu"] == "100m", requests
    assert sum(r.get(gpu) == "1" for n, r in requests.items() if n.startswith("node")) == 2, requests
    folder = volumes.models_dir(cluster) / params["version-dir"]
    assert (folder / "checkpoint" / "metrics.json").is_file() and (folder / "triton" / "fmrec" / "config.pbtxt").is_file()
    metrics = json.loads((folder / "evaluation.json").read_text())
    assert 0 < metrics["NDCG@10"] <= 1
