"""Fine-tuning: an adapter trained on a frozen FM for a task or a user slice (finetune)."""

from __future__ import annotations

import numpy as np
import torch

from fmrec.data.schema import EventLog, IntArray
from fmrec.data.split import LeaveOneOut
from fmrec.nn.adapters import AdaptedModel, Distilled
from fmrec.train.loop import Log, Objective, TrainSettings, fit, log_stderr


def slice_users(log: EventLog, attribute: str, values: list[str]) -> IntArray:
    """User codes whose `attribute` (region, ageBand, gender, occupation) is one of `values`."""
    if log.users is None or attribute not in log.users.columns:
        known = sorted(log.users.columns) if log.users is not None else []
        raise ValueError(f"slice attribute {attribute!r} is not in this data (known: {known}); fix spec.task.slice.attribute")
    vocab = log.users.vocab[attribute]
    unknown = [v for v in values if v not in vocab]
    if unknown:
        raise ValueError(f"slice values {unknown} do not occur for {attribute} (known: {list(vocab)}); fix spec.task.slice.values")
    codes = [vocab.index(v) + 1 for v in values]
    users: IntArray = np.flatnonzero(np.isin(log.users.columns[attribute], codes)).astype(np.int64)
    return users


class TaskLoss(torch.nn.Module):
    """The adapter's task: cross-entropy of the next item at every position whose next event's action
    is at least min_action; for a distilled student, mixed with the KL to the frozen FM (distill_loss)."""

    def __init__(self, model: AdaptedModel, min_action: int, temperature: float, soft_weight: float) -> None:
        super().__init__()
        self.model, self.min_action, self.temperature, self.soft_weight = model, min_action, temperature, soft_weight
        self.distill = isinstance(model.adapter, Distilled)

    def forward(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]] | None:
        t = targets["item"][..., 0]  # (B, T)
        sel = (t > 0) & (targets["action"] >= self.min_action)
        if not sel.any():
            return None
        logits = self.model.logits(inputs)  # (B, T, N)
        loss = torch.nn.functional.cross_entropy(logits[sel], t[sel])
        if self.distill:
            w = self.soft_weight
            loss = (1 - w) * loss + w * distill_loss(self.model, inputs, logits, t > 0, self.temperature)
        return loss, {}


def distill_loss(model: AdaptedModel, inputs: dict[str, torch.Tensor], student: torch.Tensor, where: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """temperature^2 * KL(teacher || student) per position, averaged over `where` (B, T); the teacher is the frozen FM.

    The padding column (always -inf) is left out: 0 * log 0 terms would be NaN."""
    with torch.no_grad():
        teacher = (model.fm(inputs) @ model.fm.item_table().T)[where][:, 1:]  # (M, N-1)
    t_log = torch.log_softmax(teacher / temperature, dim=-1)
    s_log = torch.log_softmax(student[where][:, 1:] / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(s_log, t_log, log_target=True, reduction="batchmean")
    return kl * temperature ** 2


def finetune(model: torch.nn.Module, split: LeaveOneOut, users: IntArray, s: TrainSettings, stage: str = "test",
             log: Log = log_stderr, min_action: int = 0, temperature: float = 2.0, soft_weight: float = 0.5) -> list[dict[str, float]]:
    """Train only the adapter of an AdaptedModel on the windows of `users` (the FM stays frozen).

    min_action > 0 makes it a different task: predict the next item the user will rate at least
    that high (e.g. 4 = "liked", for notifications); other next events are not targets.

    A distilled adapter (a student) learns from the frozen FM as its teacher as well: its loss is
    (1 - soft_weight) * the hard loss above + soft_weight * temperature^2 * KL(teacher || student)
    of the next-item distributions softened by `temperature`, at every position with a next event
    (the teacher knows something about every one of them, not only the task's targets).

    Against pre-training, an adapter trains with plain AdamW at a constant learning rate, no
    gradient clipping, batches in plain random order and full precision."""
    assert isinstance(model, AdaptedModel), "finetune trains an AdaptedModel (a frozen FM plus an adapter)"
    assert temperature > 0 and 0 <= soft_weight <= 1, f"temperature {temperature} must be > 0 and soft_weight {soft_weight} in [0, 1]"
    loss = TaskLoss(model, min_action, temperature, soft_weight)
    distilled = f", distilled from it at temperature {temperature:g}" if loss.distill else ""
    describe = f"{model.adapter.num_params():,} {model.adapter.kind} adapter parameters (FM frozen{distilled}) for {len(users)} users"
    keep = split.train_mask(stage) & np.isin(split.log.user, users)
    objective = Objective(loss=loss, params=list(model.adapter.parameters()), describe=describe, label="adapter ")
    return fit(model, objective, split, keep, s, log)
