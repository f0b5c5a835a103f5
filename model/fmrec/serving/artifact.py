"""One Triton model version folder holds everything the served model needs, and nothing else:

    NAME/1/model.py           Triton's python-backend entry point (a copy of fmrec/serving/triton_model.py)
    NAME/1/serving.json       manifest: format, event fields, context length, tasks -> files and score buckets
    NAME/1/vocab.json         raw values of the item / action / context codes, item popularity deciles
    NAME/1/model.pt           the foundation model: config and weights
    NAME/1/adapters/TASK.pt   one file per task adapter, trained on exactly this FM's weights

Paths in serving.json are relative to the version folder, nothing names a host path, and nothing
is written at serving time: the folder works mounted read-only anywhere (KServe's /mnt/models).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmrec import checkpoint
from fmrec.data.schema import IntArray
from fmrec.nn.adapters import AdapterBase
from fmrec.nn.fm import FoundationModel
from fmrec.serving.infer import FM_TASK, Recommender
from fmrec.vocab import Vocabulary

FORMAT = "fmrec-triton/v1"
TASK_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")  # a Kubernetes-style name: a TaskAdapter's


@dataclass(frozen=True)
class Manifest:
    fields: tuple[str, ...]
    context_len: int
    d_model: int
    fm_digest: str
    tasks: dict[str, dict[str, Any]]  # task -> {"file": relative path, "scoreBuckets": [...]}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "fields": list(self.fields), "contextLen": self.context_len, "dModel": self.d_model,
                "fmDigest": self.fm_digest, "tasks": self.tasks}

    @classmethod
    def read(cls, version: Path) -> Manifest:
        path = version / "serving.json"
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"{path}: format {d.get('format')!r}, this fmrec serves {FORMAT!r}; re-export with this fmrec")
        return cls(fields=tuple(d["fields"]), context_len=int(d["contextLen"]), d_model=int(d["dModel"]),
                   fm_digest=d["fmDigest"], tasks=d["tasks"])


def write_version(version: Path, fm: FoundationModel, vocab: Vocabulary, adapters: dict[str, AdapterBase],
                  meta: dict[str, Any], buckets: dict[str, tuple[float, ...]]) -> Manifest:
    """Write the version folder (replacing an earlier export there)."""
    for task in adapters:
        if not TASK_NAME.match(task) or task == FM_TASK:
            raise ValueError(f"task name {task!r} must be a lowercase name like a TaskAdapter's (not {FM_TASK!r}): "
                             "rename it with --adapter NAME=DIR")
    for name in ("model.py", "model.pt", "serving.json", "vocab.json", "adapters"):
        old = version / name
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    (version / "adapters").mkdir(parents=True)
    digest = checkpoint.weights_digest(fm)
    torch.save(checkpoint.blob_of(fm, meta), version / "model.pt")  # int8 tensors on disk when fm is int8
    tasks: dict[str, dict[str, Any]] = {FM_TASK: {"file": "model.pt", "scoreBuckets": list(buckets[FM_TASK])}}
    for task, adapter in adapters.items():
        rel = f"adapters/{task}.pt"
        torch.save(checkpoint.adapter_blob(adapter, digest, task), version / rel)
        tasks[task] = {"file": rel, "scoreBuckets": list(buckets[task])}
    (version / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    manifest = Manifest(fields=fm.cfg.event_fields, context_len=fm.cfg.context_len, d_model=fm.cfg.d_model,
                        fm_digest=digest, tasks=tasks)
    (version / "serving.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), version / "model.py")
    return manifest


def load_version(version: Path, k_max: int, int8: bool = False) -> tuple[Recommender, Manifest, Vocabulary]:
    """The Recommender of an exported version folder (read only)."""
    manifest = Manifest.read(version)
    fm, _ = checkpoint.load(version / manifest.tasks[FM_TASK]["file"])
    vocab = Vocabulary.from_dict(json.loads((version / "vocab.json").read_text()))
    adapters = {task: checkpoint.load_adapter(version / spec["file"], fm)[0]
                for task, spec in manifest.tasks.items() if task != FM_TASK}
    return Recommender(fm, vocab, adapters, k_max=k_max, int8=int8), manifest, vocab


def item_deciles(vocab: Vocabulary) -> IntArray:
    """Popularity decile per item code (0 for padding, and for every item when the vocabulary has none)."""
    out: IntArray = np.asarray(vocab.item_decile or [0] * (len(vocab.items) + 1), dtype=np.int64)
    return out


def dir_bytes(folder: Path) -> int:
    """Bytes of every file under folder: what a model server downloads and keeps."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
