"""Triton python-backend model for an fmrec FoundationModel (copied into the repository as model.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

from fmrec import checkpoint
from fmrec.serving.infer import Scorer


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("threads", "1")))
        model, _ = checkpoint.load(Path(args["model_repository"]) / args["model_version"] / "model.pt")
        self.scorer = Scorer(model, k=int(params.get("top_k", "100")), int8=params.get("int8", "false") == "true")

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in ("ITEMS", "ACTIONS", "TIMESTAMPS")}
                  for r in requests]
        sizes = [a["ITEMS"].shape[0] for a in arrays]
        batch = {name: np.concatenate([a[name] for a in arrays]) for name in ("ITEMS", "ACTIONS", "TIMESTAMPS")}
        items, scores, users = self.scorer.topk(batch["ITEMS"], batch["ACTIONS"], batch["TIMESTAMPS"])
        responses, start = [], 0
        for n in sizes:
            sl = slice(start, start + n)
            start += n
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("TOPK_ITEMS", items[sl]),
                pb_utils.Tensor("TOPK_SCORES", scores[sl]),
                pb_utils.Tensor("USER_EMBEDDING", users[sl]),
            ]))
        return responses
