"""Pre-training: an untrained FM sized for the data (build_model), trained on every training
event with its multi-task loss (pretrain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmrec.data.schema import EventLog, IntArray
from fmrec.data.split import LeaveOneOut
from fmrec.nn.fm import FMConfig, FoundationModel, init_weights
from fmrec.tokens import vocab_sizes
from fmrec.train.loop import Log, Objective, OnEpoch, TrainSettings, fit, log_stderr


def build_model(log: EventLog, **arch: object) -> FoundationModel:
    """An initialised FM for the data in `log`; arch: FMConfig's fields (Recipe.arch() gives them)."""
    vocab = vocab_sizes(log)
    genres = torch.from_numpy(log.items.genres) if log.items is not None else None
    year = torch.from_numpy(log.items.year_bucket) if log.items is not None else None
    cfg = FMConfig(n_items=log.n_items, vocab=vocab,
                   n_genres=genres.shape[1] if genres is not None else 0,
                   n_year_buckets=int(year.max()) if year is not None else 0, **arch)  # type: ignore[arg-type]
    model = FoundationModel(cfg, genres, year)
    init_weights(model)
    return model


class FMLoss(torch.nn.Module):
    """The FM's multi-task loss (FoundationModel.loss) as a module's forward."""

    def __init__(self, model: FoundationModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(inputs, targets)


def pretrain(model: FoundationModel, split: LeaveOneOut, s: TrainSettings, stage: str = "test", log: Log = log_stderr,
             withheld_items: IntArray | None = None, state_path: Path | None = None,
             on_epoch: OnEpoch | None = None) -> list[dict[str, float]]:
    """Train every parameter on every event before the held-out ones of `stage`; returns one record per epoch.

    withheld_items: items whose events are removed from training entirely (cold-start evaluation).
    state_path, on_epoch, s.ema and torchrun: as fit() describes them. Against fine-tuning, the FM
    trains with AdamW betas (0.9, 0.98), warmup then cosine decay, gradient clipping, batches of
    similar-length windows and bf16 on GPUs."""
    cfg = model.cfg
    keep = split.train_mask(stage)
    if withheld_items is not None:
        keep = keep & ~np.isin(split.log.item, withheld_items)
    objective = Objective(loss=FMLoss(model), params=list(model.parameters()), describe=f"{model.num_params():,} parameters",
                          horizon=cfg.horizon if "multiToken" in cfg.objectives else 1, betas=(0.9, 0.98),
                          warmup_cosine=True, clip=True, similar_lengths=True, mixed_precision=True)
    return fit(model, objective, split, keep, s, log, state_path, on_epoch)
