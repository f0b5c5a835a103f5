"""Triton python-backend model for fmrec (copied into each exported version folder as model.py).

Only the glue between Triton and fmrec lives here: read the request tensors, answer each request
(or reject it with a 400 that names the input), update the model-aware metrics. The model itself
is fmrec.serving.infer.Recommender, loaded from this version folder (fmrec.serving.artifact).

Errors, per request. Triton hands execute() a dynamic batch of requests from different clients.
Each request is parsed and validated on its own (protocol.prepare); a malformed one gets its own
error response (TritonError INVALID_ARG: HTTP 400, gRPC INVALID_ARGUMENT, the message naming the
input) and the rest of the batch is answered as if it had not been there. Only validated rows
reach the one batched backbone pass.

What Triton counts. The python backend records success or failure per execute() call, not per
response (python_backend src/pb_metric_reporter.cc): an error response counts as a success in
nv_inference_request_success, and only an exception raised from execute() counts, for every
request of the batch, in nv_inference_request_failure (reason="BACKEND"). So a client's
malformed request never moves the failure rate a Rollout's analysis and alerts read; it is
counted in fmrec_refused_requests_total{input} instead. An exception that is not a RequestError
is a bug in fmrec, not the client's input: it is logged with its traceback and raised, failing
this batch and counting as failures, so a broken model cannot pass a canary's analysis on error
responses that Triton counts as successes. The fuzz test (tests/integration/test_triton_fuzz.py)
is what shows no request reaches that path. (pytriton's own inference callables cannot do better:
an exception there fails every request of the batch, pytriton/proxy/model.py.)

Experiments. A request that carried the bucket header (forwarded by Triton as a request parameter,
fmrec.serving.protocol "Experiments") counts its answered users in fmrec_experiment_requests_total
too; a malformed value is no error and counts nothing there.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

from fmrec.serving import protocol
from fmrec.serving.artifact import item_deciles, load_version
from fmrec.serving.infer import Prepared, Recommendation
from fmrec.serving.metrics import ServingMetrics
from fmrec.serving.request import RequestError


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("threads", "1")))
        version = Path(args["model_repository"]) / args["model_version"]
        self.rec, manifest, vocab = load_version(version, k_max=int(params.get("top_k", "100")), int8=params.get("int8") == "true")
        buckets = {task: spec["scoreBuckets"] for task, spec in manifest.tasks.items()}
        self.metrics = ServingMetrics(pb_utils, args["model_name"], args["model_version"], buckets, item_deciles(vocab))
        self.faults = Faults.of(params)

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.faults.latency_s:
            time.sleep(self.faults.latency_s)
        if self.faults.fails():  # raised, not returned as error responses: only then does Triton count failures
            raise pb_utils.TritonModelException(f"fault injected: parameter fault_error_share={self.faults.error_share}")
        try:
            return self._answer(requests)
        except Exception as err:  # a bug, not a request's fault (those are RequestErrors): fail the batch, visibly
            pb_utils.Logger.log_error(f"fmrec: {len(requests)} requests failed: {traceback.format_exc()}")
            raise pb_utils.TritonModelException(f"internal error in the fmrec model ({type(err).__name__}); "
                                                "the server's log has the traceback") from None

    def _answer(self, requests: list[Any]) -> list[Any]:
        prepared: list[list[Prepared] | RequestError] = []
        for request in requests:
            try:
                prepared.append(protocol.prepare(self.rec, partial(_array, request)))
            except RequestError as err:
                prepared.append(err)
        results = iter(self.rec.run([row for p in prepared if not isinstance(p, RequestError) for row in p]))  # one backbone pass
        responses, answered, experiment = [], [], []
        for request, p in zip(requests, prepared, strict=True):
            if isinstance(p, RequestError):
                self.metrics.refused(p.tensor)
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(p), pb_utils.TritonError.INVALID_ARG)))
                continue
            mine = [next(results) for _ in p]
            answered += mine
            experiment += [protocol.experiment_bucket(protocol.request_parameters(request)) is not None] * len(mine)
            responses.append(pb_utils.InferenceResponse(output_tensors=_outputs(mine)))
        self.metrics.record(answered, experiment)
        return responses


class Faults:
    """Test-only fault injection, off unless the model's config.pbtxt sets it (`fmrec export --fault-*`,
    or `fmrec.serving.export.set_faults` on an exported model): a share of batches fail with an
    internal error (HTTP 500; one request per batch without concurrent load) and every batch waits `fault_latency_ms` first. It makes a bad canary out
    of a good model without a second codebase; the analysis and alert tests of the Rollout use it."""

    def __init__(self, error_share: float, latency_ms: float) -> None:
        self.error_share, self.latency_s = error_share, latency_ms / 1000
        self._rng = random.Random(0)

    @classmethod
    def of(cls, params: dict[str, str]) -> Faults:
        return cls(float(params.get("fault_error_share", "0") or 0), float(params.get("fault_latency_ms", "0") or 0))

    def fails(self) -> bool:
        return self._rng.random() < self.error_share


def _array(request: Any, name: str) -> npt.NDArray[np.generic] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.asarray(tensor.as_numpy())


def _outputs(rows: list[Recommendation]) -> list[Any]:
    return [
        pb_utils.Tensor("TOPK_ITEMS", np.array([[i.encode() for i in r.items] for r in rows], dtype=np.object_)),  # (B, K)
        pb_utils.Tensor("TOPK_SCORES", np.stack([r.scores for r in rows]).astype(np.float32)),  # (B, K)
        pb_utils.Tensor("USER_EMBEDDING", np.stack([r.user for r in rows]).astype(np.float32)),  # (B, C)
    ]
