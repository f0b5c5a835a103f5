"""The protocol's selection rule, the training clock, and the record one run leaves."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fmrec.eval.metrics import ranking_metrics

KS = (10, 20, 50)
BASELINES = ("sasrec", "bert4rec", "hstu")


@dataclass(frozen=True)
class Protocol:
    every: int = 5  # epochs between validation checks
    patience: int = 3  # checks without a validation gain before stopping
    max_epochs: int = 100


class Selector:
    """Early stopping on validation NDCG@10: remembers the best check and says when to stop."""

    def __init__(self, protocol: Protocol) -> None:
        self.p = protocol
        self.best = -1.0
        self.best_epoch = 0
        self.bad = 0
        self.curve: list[dict[str, float]] = []

    def check(self, epoch: int, val_ndcg: float) -> tuple[bool, bool]:
        """Record a check; returns (is the new best, stop now)."""
        self.curve.append({"epoch": epoch, "val_NDCG@10": round(val_ndcg, 5)})
        improved = val_ndcg > self.best
        if improved:
            self.best, self.best_epoch, self.bad = val_ndcg, epoch, 0
        else:
            self.bad += 1
        return improved, self.bad >= self.p.patience or epoch >= self.p.max_epochs


class Clock:
    """Training time of one run, without its validation checks: wall seconds, and the process's CPU
    seconds (all its threads), which another job on the machine inflates far less than wall time."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.best_wall = self.best_cpu = 0.0
        self._t: tuple[float, float] | None = None

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        assert self._t is not None, "Clock.stop() without start()"
        self.wall += time.perf_counter() - self._t[0]
        self.cpu += time.process_time() - self._t[1]
        self._t = None

    def mark_best(self) -> None:
        self.best_wall, self.best_cpu = self.wall, self.cpu

    def record(self) -> dict[str, float]:
        return {"train_s_to_best": round(self.best_wall, 1), "train_s_total": round(self.wall, 1),
                "train_cpu_s_to_best": round(self.best_cpu, 1), "train_cpu_s_total": round(self.cpu, 1)}


def run_record(kind: str, config: dict[str, Any], seed: int, sel: Selector, clock: Clock, test_ranks: npt.NDArray[np.int64],
               n_params: int) -> dict[str, Any]:
    """What one run leaves in the JSON files: its configuration, selection, test metrics at the
    selected epoch, times, validation curve and per-user test ranks."""
    return {"model": kind, "config": config, "seed": seed, "params": int(n_params), "best_epoch": sel.best_epoch,
            "val_NDCG@10": round(sel.best, 5), "test": {k: round(v, 5) for k, v in ranking_metrics(test_ranks, KS).items()},
            **clock.record(),
            "curve": sel.curve, "test_ranks": test_ranks.tolist()}
