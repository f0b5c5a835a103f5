"""The exported model served by the real Triton server (from the nvidia-pytriton wheel) returns
exactly the offline top-k, over HTTP and gRPC, in fp32 and int8."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from fmrec import checkpoint
from fmrec.data.movielens import load_ml100k
from fmrec.data.split import leave_one_out
from fmrec.serving.export import export_triton
from fmrec.serving.infer import Scorer
from fmrec.serving.server import TritonServer
from fmrec.train import TrainSettings, build_model, train

T, K = 32, 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = load_ml100k()
    split = leave_one_out(log)
    model = build_model(log, d_model=32, n_layers=1, n_heads=2, context_len=T, event_fields=("item", "action", "timeGap"))
    train(model, split, TrainSettings(epochs=1, batch_size=256, stride=T), log=lambda m: None)
    out = tmp_path_factory.mktemp("fm")
    checkpoint.save(model, out, {"data": "movielens100k"})
    return out


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    work = tmp_path_factory.mktemp("triton")
    export_triton(trained, work / "repo", name="fmrec", k=K)
    export_triton(trained, work / "repo", name="fmrec_int8", k=K, int8=True)
    with TritonServer(work / "repo", work) as s:
        yield s


def histories(n: int = 24) -> dict[str, np.ndarray]:
    log = load_ml100k()
    split = leave_one_out(log)
    arrays = {k: np.zeros((n, T), dtype=np.int64) for k in ("ITEMS", "ACTIONS", "TIMESTAMPS")}
    for b, u in enumerate(split.test_users[:n]):
        rows = split.history(int(u), "test")[-T + b % 5:]  # some histories shorter than T: left padding
        arrays["ITEMS"][b, T - len(rows):] = split.log.item[rows]
        arrays["ACTIONS"][b, T - len(rows):] = split.log.action[rows]
        arrays["TIMESTAMPS"][b, T - len(rows):] = split.log.timestamp[rows]
    return arrays


def _infer(client: Any, module: Any, name: str, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    inputs = []
    for key, arr in arrays.items():
        i = module.InferInput(key, list(arr.shape), "INT64")
        i.set_data_from_numpy(arr)
        inputs.append(i)
    result = client.infer(name, inputs)
    return result.as_numpy("TOPK_ITEMS"), result.as_numpy("TOPK_SCORES")


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_served_topk_equals_offline_topk(server: TritonServer, trained: Path, int8: bool) -> None:
    arrays = histories()
    model, _ = checkpoint.load(trained)
    want_items, want_scores, _ = Scorer(model, k=K, int8=int8).topk(arrays["ITEMS"], arrays["ACTIONS"], arrays["TIMESTAMPS"])
    name = "fmrec_int8" if int8 else "fmrec"
    for client, module in ((thttp.InferenceServerClient(server.http_url), thttp),
                           (tgrpc.InferenceServerClient(server.grpc_url), tgrpc)):
        items, scores = _infer(client, module, name, arrays)
        assert items.shape == (24, K)
        np.testing.assert_array_equal(items, want_items)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # never recommends an item already in the history
    assert not any(set(items[b]) & set(arrays["ITEMS"][b][arrays["ITEMS"][b] > 0]) for b in range(len(items)))


def test_bad_request_is_rejected_with_a_message(server: TritonServer) -> None:
    client = thttp.InferenceServerClient(server.http_url)
    bad = thttp.InferInput("ITEMS", [1, T + 1], "INT64")
    bad.set_data_from_numpy(np.zeros((1, T + 1), dtype=np.int64))
    with pytest.raises(Exception, match="ITEMS"):
        client.infer("fmrec", [bad])
    assert client.is_model_ready("fmrec")  # and the model keeps serving
