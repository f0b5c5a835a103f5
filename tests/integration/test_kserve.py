"""The real KServe controller serves the exported FM: an InferenceService with a pvc:// storageUri
becomes a Deployment, a pod running Triton (from the fmrec image) and an EndpointSlice, reports
READY=True, and the pod answers v2 inference with exactly the offline top-k. KServe's own webhooks
are live: they mount the model volume into the pod and reject an invalid InferenceService."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as thttp

from fmop.local import kserve
from fmrec import checkpoint
from fmrec.data.movielens import load_ml100k
from fmrec.data.split import leave_one_out
from fmrec.serving.export import export_triton
from fmrec.serving.infer import Scorer
from fmrec.train import TrainSettings, build_model, train

from .helpers import wait_for

T, K = 32, 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = load_ml100k()
    model = build_model(log, d_model=32, n_layers=1, n_heads=2, context_len=T, event_fields=("item", "action", "timeGap"))
    train(model, leave_one_out(log), TrainSettings(epochs=1, batch_size=256, stride=T), log=lambda m: None)
    out = tmp_path_factory.mktemp("fm")
    checkpoint.save(model, out, {"data": "movielens100k"})
    return out


def isvc(name: str, namespace: str, storage_uri: str, **predictor: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "none"}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "triton"}, "protocolVersion": "v2", "runtime": kserve.RUNTIME,
                                             "storageUri": storage_uri}, **predictor}}}


def histories(n: int = 8) -> dict[str, np.ndarray]:
    split = leave_one_out(load_ml100k())
    arrays = {k: np.zeros((n, T), dtype=np.int64) for k in ("ITEMS", "ACTIONS", "TIMESTAMPS")}
    for b, u in enumerate(split.test_users[:n]):
        rows = split.history(int(u), "test")[-T:]
        arrays["ITEMS"][b, T - len(rows):] = split.log.item[rows]
        arrays["ACTIONS"][b, T - len(rows):] = split.log.action[rows]
        arrays["TIMESTAMPS"][b, T - len(rows):] = split.log.timestamp[rows]
    return arrays


def test_inferenceservice_serves_the_exported_fm(cluster: Any, namespace: str, trained: Path) -> None:
    export_triton(trained, kserve.models_dir(cluster) / namespace / "fm-v1", name="fmrec", k=K)
    kserve.models_volume(cluster, namespace)
    cluster.apply([isvc("fm", namespace, f"pvc://{kserve.MODELS_CLAIM}/{namespace}/fm-v1")], "InferenceService fm")

    def ready() -> dict[str, Any] | None:
        obj: dict[str, Any] = json.loads(cluster.kubectl("get", "inferenceservice", "fm", "-n", namespace, "-o", "json").stdout)
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        return obj if conds.get("Ready") == "True" else None
    try:
        obj = wait_for(ready, 300, "InferenceService fm Ready", interval=2)
    except AssertionError:
        print(cluster.kubectl("describe", "pods", "-n", namespace).stdout[-4000:])
        print(cluster.log_tail("kserve-manager", 40))
        raise
    assert obj["status"]["modelStatus"]["states"]["activeModelState"] == "Loaded"

    # The pod mutator webhook mounted the claim at /mnt/models (no storage-initializer needed).
    pod = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "serving.kserve.io/inferenceservice=fm", "-o", "json").stdout)["items"][0]
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/models"]["subPath"] == f"{namespace}/fm-v1"

    # The predictor Service's EndpointSlice carries the pod's address; ask Triton there.
    slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=fm-predictor", "-o", "json").stdout)
    address = slices["items"][0]["endpoints"][0]["addresses"][0]
    arrays = histories()
    client = thttp.InferenceServerClient(f"{address}:8080")
    inputs = []
    for key, arr in arrays.items():
        i = thttp.InferInput(key, list(arr.shape), "INT64")
        i.set_data_from_numpy(arr)
        inputs.append(i)
    result = client.infer("fmrec", inputs)
    model, _ = checkpoint.load(trained)
    want_items, want_scores, _ = Scorer(model, k=K).topk(arrays["ITEMS"], arrays["ACTIONS"], arrays["TIMESTAMPS"])
    np.testing.assert_array_equal(result.as_numpy("TOPK_ITEMS"), want_items)
    np.testing.assert_allclose(result.as_numpy("TOPK_SCORES"), want_scores, rtol=1e-5, atol=1e-5)


def test_kserve_webhook_rejects_an_invalid_inferenceservice(cluster: Any, namespace: str) -> None:
    bad = isvc("bad", namespace, f"pvc://{kserve.MODELS_CLAIM}/nowhere", minReplicas=3, maxReplicas=2)
    out = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0
    assert "inferenceservice.kserve-webhook-server.validator" in out.stderr, out.stderr
