"""The one training loop. Pre-training the FM (fmrec.train.pretrain) and fine-tuning an adapter
(fmrec.train.finetune) both run fit(); an Objective says what they train and the few ways they
train it differently. The same on CPU, one GPU, or several GPUs under torchrun."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from fmrec.data.split import LeaveOneOut
from fmrec.nn.adapters import AdaptedModel
from fmrec.nn.fm import FoundationModel
from fmrec.tokens import tokenize, windows
from fmrec.train.batching import batch_tensors, length_buckets, shuffled_batches
from fmrec.train.distributed import world

Log = Callable[[str], None]
OnEpoch = Callable[[int, dict[str, float]], bool]


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    seed: int = 42
    stride: int | None = None  # sliding-window stride; default context_len // 2
    precision: str = "auto"  # auto | fp32 | bf16
    grad_clip: float = 1.0
    device: str = "auto"
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights (this decay per step) and use it


@dataclass(frozen=True)
class Objective:
    """What one run trains, and how pre-training and fine-tuning differ; fit() does the rest.

    loss(inputs, targets) returns (loss, parts to log), or None for a batch without a target of
    this objective (it is skipped). It is a module so that DistributedDataParallel can wrap it."""

    loss: torch.nn.Module
    params: list[torch.nn.Parameter]  # what the optimiser updates: the whole FM, or an adapter only
    describe: str  # what trains, for the first log line ("224,768 parameters")
    horizon: int = 1  # item targets per position: the next `horizon` items
    label: str = ""  # before "epoch" in the progress lines
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's
    warmup_cosine: bool = False  # learning rate: linear warmup over warmup_steps, then cosine decay to 0; else constant
    clip: bool = False  # clip the gradient norm at grad_clip
    similar_lengths: bool = False  # batches of windows of similar length (less padding); else plain random order
    mixed_precision: bool = False  # bf16 autocast where the settings' precision asks for it


class WeightAverage:
    """An exponential moving average of a model's parameters, swapped in for evaluation and kept at the end."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        assert 0 < decay < 1, f"ema decay {decay} must be in (0, 1)"
        self.decay = decay
        self.params = list(model.parameters())
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for e, p in zip(self.shadow, self.params, strict=True):
            e.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the average (call twice to undo)."""
        for e, p in zip(self.shadow, self.params, strict=True):
            tmp = p.detach().clone()
            p.copy_(e)
            e.copy_(tmp)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(opt: torch.optim.Optimizer, warmup_steps: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))


def fit(model: FoundationModel | AdaptedModel, objective: Objective, split: LeaveOneOut, keep: npt.NDArray[np.bool_],
        s: TrainSettings, log: Log = log_stderr, state_path: Path | None = None,
        on_epoch: OnEpoch | None = None) -> list[dict[str, float]]:
    """Train objective.params on sliding windows over the log rows where `keep` is True; returns one
    record per epoch.

    state_path: after every epoch the full training state (weights, optimiser, schedule, RNGs) is
    written there; if it exists when training starts, training resumes after its last epoch.
    on_epoch(epoch, record): called after every epoch (it may evaluate); returning True stops
    training there (early stopping). The model is put back in training mode after it.
    s.ema > 0: on_epoch sees the averaged weights, and the model ends with them.
    Under torchrun (torch.distributed initialised) every rank trains on its share of each epoch's
    batches and DistributedDataParallel averages the gradients; rank 0 logs and saves."""
    rank, n_ranks = world()
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)  # same on every rank: all ranks agree on the batch order
    device = objective.params[0].device
    cfg = model.cfg
    tok = tokenize(split.log)
    wins = windows(split.offsets, keep, cfg.context_len, s.stride or max(1, cfg.context_len // 2))
    total = math.ceil(len(wins) / s.batch_size / n_ranks) * s.epochs
    opt = torch.optim.AdamW(objective.params, lr=s.lr, weight_decay=s.weight_decay, betas=objective.betas)
    sched = warmup_cosine(opt, s.warmup_steps, total) if objective.warmup_cosine else None
    use_bf16 = objective.mixed_precision and (
        s.precision == "bf16" or (s.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()))
    history: list[dict[str, float]] = []
    first_epoch = 1
    average = WeightAverage(model, s.ema) if s.ema > 0 else None
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        if average is not None and "ema" in state:
            for e, v in zip(average.shadow, state["ema"], strict=True):
                e.copy_(v)
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history, first_epoch = state["history"], state["epoch"] + 1
        log(f"resuming from {state_path} after epoch {state['epoch']}")
    step = objective.loss
    if n_ranks > 1:
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    n_events = sum(len(w) - 1 for w in wins)
    log(f"training {objective.describe} on {len(wins):,} windows ({n_events:,} targets) for {s.epochs} epochs on "
        f"{n_ranks} x {device}{' in bf16' if use_bf16 else ''}")
    model.train()
    for epoch in range(first_epoch, s.epochs + 1):
        t0, sums, seen = time.perf_counter(), {"loss": 0.0}, 0
        batches = (length_buckets if objective.similar_lengths else shuffled_batches)(wins, s.batch_size, rng)
        batches = batches[: len(batches) // n_ranks * n_ranks][rank::n_ranks]  # equal step counts on every rank
        for rows in batches:
            inputs, targets = batch_tensors(tok, rows, cfg.context_len, objective.horizon, cfg.event_fields, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = step(inputs, targets)
            if out is None:
                continue  # no target of this objective in the batch
            loss, parts = out
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if objective.clip:
                torch.nn.utils.clip_grad_norm_(objective.params, s.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            if average is not None:
                average.update()
            sums["loss"] += float(loss.detach()) * len(rows)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(rows)
            seen += len(rows)
        dt = time.perf_counter() - t0
        rec = {"epoch": float(epoch), **{k: v / max(seen, 1) for k, v in sums.items()}, "seconds": dt, "events_per_s": n_events / dt}
        history.append(rec)
        if rank == 0:
            log(f"{objective.label}epoch {epoch:3d}/{s.epochs}  loss {rec['loss']:.4f}  {rec['events_per_s']:,.0f} events/s  {dt:.1f}s")
            if state_path is not None:
                tmp = state_path.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict() if sched is not None else None,
                            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history,
                            "epoch": epoch, **({"ema": average.shadow} if average is not None else {})}, tmp)
                tmp.replace(state_path)  # atomic: a crash mid-write leaves the previous state
        stop = False
        if on_epoch is not None:
            if average is not None:
                average.swap()  # evaluate the average
            stop = on_epoch(epoch, rec)
            model.train()
            if average is not None:
                average.swap()
        if stop:
            break
    if average is not None:
        average.swap()  # the model keeps the average
    model.eval()
    return history
