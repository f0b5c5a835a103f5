"""Save and load trained versions: weights, config, settings, vocabulary and what data they saw.

An FM version is a folder with model.pt (config, weights, metadata and the Vocabulary that maps
its codes to raw values); a TaskAdapter version is a folder with adapter.pt (the adapter's
weights, its task name and the digest of the FM weights it was trained on).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from fmrec.nn.adapters import AdapterBase, build_adapter
from fmrec.nn.fm import FMConfig, FoundationModel
from fmrec.serving import quant
from fmrec.vocab import Vocabulary

_BAD = (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, TypeError, ValueError, AssertionError)


def save(model: FoundationModel, out: Path, meta: dict[str, Any], vocab: Vocabulary | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.pt"
    blob = blob_of(model, meta)
    if vocab is not None:
        blob["vocab"] = vocab.to_dict()
    torch.save(blob, path)
    (out / "config.json").write_text(json.dumps({"config": model.cfg.to_dict(), **meta}, indent=2, default=str))
    return path


def blob_of(model: FoundationModel, meta: dict[str, Any]) -> dict[str, Any]:
    """What model.pt holds: config, weights (int8 ones with their format named) and metadata."""
    blob: dict[str, Any] = {"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "meta": meta}
    if quant.is_int8(model):
        blob["quantization"] = quant.FORMAT
    return blob


def _blob(path: Path, device: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    path = path / "model.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint; train one with `python -m fmrec train --out {path.parent}`")
    try:
        blob: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    except _BAD as err:
        raise ValueError(f"{path} is not a usable fmrec checkpoint ({type(err).__name__}: {err}); retrain or restore it") from err
    return path, blob


def load(path: Path, device: str | torch.device = "cpu") -> tuple[FoundationModel, dict[str, Any]]:
    path, blob = _blob(path, device)
    try:
        cfg = FMConfig.from_dict(blob["config"])
        model = FoundationModel(cfg)
        q = blob.get("quantization")
        if q not in (None, *quant.FORMATS):
            raise ValueError(f"quantization {q!r}, this fmrec reads only {' and '.join(quant.FORMATS)}; re-export with this fmrec")
        if q is not None:
            quant.int8_skeleton(model, blob["state_dict"])
        # Buffers (genres, year buckets) are sized by the data; load them before the weights.
        model.items.register_buffer("genres", blob["state_dict"]["items.genres"])
        model.items.register_buffer("year_bucket", blob["state_dict"]["items.year_bucket"])
        model.load_state_dict(blob["state_dict"])
    except _BAD as err:
        raise ValueError(f"{path} is not a usable fmrec checkpoint ({type(err).__name__}: {err}); retrain or restore it") from err
    model.to(device).eval()
    return model, dict(blob.get("meta", {}))


def load_vocab(path: Path) -> Vocabulary | None:
    """The Vocabulary saved with a checkpoint; None for checkpoints written before vocabularies were."""
    path, blob = _blob(path)
    return Vocabulary.from_dict(blob["vocab"]) if "vocab" in blob else None


def weights_digest(model: torch.nn.Module) -> str:
    """Content hash of a model's weights: names an FM version independently of where it is stored."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"sha256:{h.hexdigest()}"


def adapter_blob(adapter: AdapterBase, base_digest: str, task: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What adapter.pt (and a served version's adapters/TASK.pt) holds: weights, kind and settings, task, FM digest."""
    blob: dict[str, Any] = {"adapter": adapter.state_dict(), "kind": adapter.kind, "settings": adapter.settings(), "task": task,
                            "baseDigest": base_digest}
    if "dim" in blob["settings"]:
        blob["dim"] = blob["settings"]["dim"]  # what fmrec before lora/distilled reads
    if meta is not None:
        blob["meta"] = meta
    return blob


def save_adapter(adapter: AdapterBase, fm: FoundationModel, out: Path, task: str, meta: dict[str, Any]) -> Path:
    """Write out/adapter.pt: the adapter, its task name and the digest of the FM it was trained on."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "adapter.pt"
    torch.save(adapter_blob(adapter, weights_digest(fm), task, meta), path)
    return path


def load_adapter(path: Path, fm: FoundationModel) -> tuple[AdapterBase, dict[str, Any]]:
    """An adapter for `fm`; a ValueError names the file when it was trained on another FM version."""
    path = path / "adapter.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no adapter; train one with `python -m fmrec finetune --out {path.parent}`")
    try:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        settings = blob.get("settings") or {"dim": int(blob["dim"])}  # files written before settings were saved
        adapter = build_adapter(fm, blob["kind"], settings)
        adapter.load_state_dict(blob["adapter"])
    except _BAD as err:
        raise ValueError(f"{path} is not an adapter for this FM ({type(err).__name__}: {err}); "
                         "fine-tune it again on this FM version") from err
    base = blob.get("baseDigest")
    if base is not None and base != weights_digest(fm):
        raise ValueError(f"{path} was trained on another FM version (weights {base[:19]}..., this FM's {weights_digest(fm)[:19]}...); "
                         "fine-tune it again on this FM version or export it with the FM it was trained on")
    return adapter.eval(), {k: v for k, v in blob.items() if k not in ("adapter",)}
