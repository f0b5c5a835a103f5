"""Write a Triton model repository for a trained FM (python backend, dynamic batching).

    repo/<name>/config.pbtxt
    repo/<name>/1/model.py     the python-backend model (imports fmrec and torch)
    repo/<name>/1/model.pt     the checkpoint

Request: ITEMS, ACTIONS, TIMESTAMPS, each INT64 [context_len], the user's most recent events
left-padded with 0 (item codes as in training). Response: TOPK_ITEMS INT64 [k], TOPK_SCORES FP32
[k] (items in the history are never recommended), USER_EMBEDDING FP32 [d_model].
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fmrec.nn.fm import FoundationModel

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "ITEMS" data_type: TYPE_INT64 dims: [ {T} ] }},
  {{ name: "ACTIONS" data_type: TYPE_INT64 dims: [ {T} ] }},
  {{ name: "TIMESTAMPS" data_type: TYPE_INT64 dims: [ {T} ] }}
]
output [
  {{ name: "TOPK_ITEMS" data_type: TYPE_INT64 dims: [ {k} ] }},
  {{ name: "TOPK_SCORES" data_type: TYPE_FP32 dims: [ {k} ] }},
  {{ name: "USER_EMBEDDING" data_type: TYPE_FP32 dims: [ {C} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
parameters: {{ key: "top_k" value: {{ string_value: "{k}" }} }}
parameters: {{ key: "int8" value: {{ string_value: "{int8}" }} }}
"""


def export_triton(model_dir: Path, repo: Path, name: str = "fmrec", k: int = 100, int8: bool = False,
                  max_batch: int = 64, delay_us: int = 2000, instances: int = 1) -> Path:
    """Write repo/<name>/ from the checkpoint in model_dir; returns the model's folder."""
    from fmrec import checkpoint

    model, _ = checkpoint.load(model_dir)
    assert isinstance(model, FoundationModel)
    cfg = model.cfg
    target = repo / name
    version = target / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir / "model.pt" if model_dir.is_dir() else model_dir, version / "model.pt")
    shutil.copy2(Path(__file__).with_name("triton_model.py"), version / "model.py")
    (target / "config.pbtxt").write_text(CONFIG.format(name=name, max_batch=max_batch, T=cfg.context_len, k=k, C=cfg.d_model,
                                                       delay_us=delay_us, instances=instances, int8=str(int8).lower()))
    return target
