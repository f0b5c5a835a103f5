"""The real KServe controller serves the exported FM: an InferenceService with a pvc:// storageUri
becomes a Deployment, a pod running Triton (from the fmrec image) and an EndpointSlice, reports
READY=True, and the pod answers raw-ID v2 requests (HTTP and gRPC) with exactly evaluate()'s ranking. KServe's own webhooks
are live: they mount the model volume into the pod and reject an invalid InferenceService."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmdev.local import kserve, volumes
from fmrec import checkpoint
from fmrec.data.movielens import load_ml100k
from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.serving.client import Event, RecommenderClient
from fmrec.serving.export import export_triton
from fmrec.train.loop import TrainSettings
from fmrec.train.pretrain import build_model, pretrain
from fmrec.vocab import Vocabulary
from tests.model.serving_cases import assert_same_ranking, evaluated_scores, raw_history

from .helpers import wait_for

T, K = 32, 10


@pytest.fixture(scope="module")
def ml() -> LeaveOneOut:
    return leave_one_out(load_ml100k())


@pytest.fixture(scope="module")
def trained(ml: LeaveOneOut, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(ml.log, d_model=32, n_layers=1, n_heads=2, context_len=T, event_fields=("item", "action", "timeGap"))
    pretrain(model, ml, TrainSettings(epochs=1, batch_size=256, stride=T), log=lambda m: None)
    out = tmp_path_factory.mktemp("fm")
    checkpoint.save(model, out, {"data": "movielens100k"}, Vocabulary.from_log(ml.log, ml.train_mask()))
    return out


def isvc(name: str, namespace: str, storage_uri: str, **predictor: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "none"}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "triton"}, "protocolVersion": "v2", "runtime": kserve.RUNTIME,
                                             "storageUri": storage_uri}, **predictor}}}


def events(split: LeaveOneOut, user: int) -> list[Event]:
    h = raw_history(split, user)
    return [Event(i, int(t), a) for i, t, a in zip(h["items"], h["timestamps"], h["actions"], strict=True)]


def test_inferenceservice_serves_the_exported_fm(cluster: Any, namespace: str, trained: Path, ml: LeaveOneOut) -> None:
    export_triton(trained, volumes.models_dir(cluster) / namespace / "fm-v1", name="fmrec", k=K)
    volumes.models_volume(cluster, namespace)
    cluster.apply([isvc("fm", namespace, f"pvc://{volumes.MODELS_CLAIM}/{namespace}/fm-v1")], "InferenceService fm")

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
    # Raw MovieLens IDs in, raw IDs out, over v2 HTTP (8080) and gRPC (9000) as KServe's Triton
    # runtime exposes them; the ranking is evaluate()'s for the same history.
    fm, _ = checkpoint.load(trained)
    users = ml.test_users[:8]
    want = evaluated_scores(fm, ml, users)
    index = {raw: c for c, raw in enumerate(ml.log.item_ids, start=1)}
    for client in (RecommenderClient(f"{address}:8080"), RecommenderClient(f"{address}:9000", protocol="grpc")):
        for b, u in enumerate(users):
            got = client.recommend(events(ml, int(u)), k=K)
            assert len(got.items) == K
            assert_same_ranking(np.array([index[i] for i in got.items], dtype=np.int64), want[b], int(u), got.scores)


def test_kserve_webhook_rejects_an_invalid_inferenceservice(cluster: Any, namespace: str) -> None:
    bad = isvc("bad", namespace, f"pvc://{volumes.MODELS_CLAIM}/nowhere", minReplicas=3, maxReplicas=2)
    out = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0
    assert "inferenceservice.kserve-webhook-server.validator" in out.stderr, out.stderr
