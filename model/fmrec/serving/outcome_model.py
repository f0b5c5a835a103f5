"""Triton python-backend model NAME_outcome (copied into its version folder as model.py): counts what
users did with the recommendations of the recommend model NAME exported beside it.

Clients report an outcome (fmrec.serving.protocol.OUTCOMES) with the same bucket header as the
recommend request (fmrec.serving.client), so the route that sent a user to a revision sends the
user's outcomes to the same revision, and each revision's /metrics counts the outcomes of the
lists it served: fmrec_outcomes_total and fmrec_outcome_position (fmrec.serving.metrics). Rows of a
report that carried the header (forwarded by Triton as a request parameter, fmrec.serving.protocol
"Experiments") count in fmrec_experiment_outcomes_total too; a malformed value is no error and
counts nothing there.

Errors, per request, as in the recommend model (fmrec.serving.triton_model): a malformed request
gets its own 400 naming the input (OUTCOME, POSITION, TASK) and counts nothing, the rest of the
batch is counted as if it had not been there, and the refusal shows in
fmrec_refused_requests_total{model=NAME_outcome,input}. Anything else is a bug: logged with its
traceback and raised, failing the batch.

What it needs from the recommend model comes from its own config.pbtxt (fmrec.serving.export): the
recommend model's name and version (the labels), its tasks and its maximum K. It loads no weights
and imports no torch, so it costs Triton one small stub process.
"""

from __future__ import annotations

import json
import traceback
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

from fmrec.serving import protocol
from fmrec.serving.metrics import OutcomeMetrics
from fmrec.serving.request import RequestError


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tasks = tuple(params["tasks"].split(","))
        self.k_max = int(params["top_k"])
        self.metrics = OutcomeMetrics(pb_utils, args["model_name"], args["model_version"], params["recommender"],
                                      params["recommender_version"], self.tasks)

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return self._answer(requests)
        except Exception as err:  # a bug, not a request's fault (those are RequestErrors): fail the batch, visibly
            pb_utils.Logger.log_error(f"fmrec outcomes: {len(requests)} requests failed: {traceback.format_exc()}")
            raise pb_utils.TritonModelException(f"internal error in the fmrec outcome model ({type(err).__name__}); "
                                                "the server's log has the traceback") from None

    def _answer(self, requests: list[Any]) -> list[Any]:
        responses, counted, experiment = [], [], []
        for request in requests:
            try:
                rows = protocol.outcomes(partial(_array, request), self.tasks, self.k_max)
            except RequestError as err:
                self.metrics.refused(err.tensor)
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)))
                continue
            counted += rows
            experiment += [protocol.experiment_bucket(protocol.request_parameters(request)) is not None] * len(rows)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("ACK", np.ones((len(rows), 1), np.int32))]))
        self.metrics.record(counted, experiment)
        return responses


def _array(request: Any, name: str) -> npt.NDArray[np.generic] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.asarray(tensor.as_numpy())
