"""Save and load trained versions: weights, config, settings and what data they saw."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from fmrec.nn.fm import FMConfig, FoundationModel


def save(model: FoundationModel, out: Path, meta: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.pt"
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "meta": meta}, path)
    (out / "config.json").write_text(json.dumps({"config": model.cfg.to_dict(), **meta}, indent=2, default=str))
    return path


def load(path: Path, device: str | torch.device = "cpu") -> tuple[FoundationModel, dict[str, Any]]:
    path = path / "model.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint; train one with `python -m fmrec train --out {path.parent}`")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        cfg = FMConfig.from_dict(blob["config"])
        model = FoundationModel(cfg)
        # Buffers (genres, year buckets) are sized by the data; load them before the weights.
        model.items.register_buffer("genres", blob["state_dict"]["items.genres"])
        model.items.register_buffer("year_bucket", blob["state_dict"]["items.year_bucket"])
        model.load_state_dict(blob["state_dict"])
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a usable fmrec checkpoint ({type(err).__name__}: {err}); retrain or restore it") from err
    model.to(device).eval()
    return model, dict(blob.get("meta", {}))
