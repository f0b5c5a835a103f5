"""The FM's recipe: its architecture and training schedule, in one place.

`Recipe()` is what `fmrec train` (and `make train-fm`) trains when no flag says otherwise: the
configuration the benchmark chose on validation (benchmarks/tuning.json, "chosen" -> "fm"). The
benchmark records every FM grid point as a Recipe's to_config(), and a test keeps the default
equal to the chosen point: after a new `make tune` picks another point, change the defaults here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fmrec.train.loop import TrainSettings

ARCHITECTURE = ("d_model", "n_layers", "n_heads", "context_len", "dropout", "item_id_dropout", "event_fields", "objectives")
SCHEDULE = ("epochs", "lr", "batch_size")
OPTIONAL = {"horizon": None, "weight_decay": 0.0, "stride": None, "ema": 0.0}  # left out of to_config() at these values


@dataclass(frozen=True)
class Recipe:
    # architecture (fmrec.nn.fm.FMConfig)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    context_len: int = 50
    dropout: float = 0.2
    item_id_dropout: float = 0.1
    event_fields: tuple[str, ...] = ("item", "action", "timeGap", "relativeTime")
    objectives: dict[str, float] = field(default_factory=lambda: {"nextItem": 1.0})
    horizon: int | None = None  # multiToken: items ahead (None: FMConfig's)
    # schedule (fmrec.train.loop.TrainSettings)
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    stride: int | None = 25  # between training windows over long histories, at most the context length; None: the context length
    ema: float = 0.99  # decay of the moving average of the weights that is kept; 0: the last weights

    def arch(self) -> dict[str, Any]:
        """FMConfig's keyword arguments (fmrec.train.pretrain.build_model takes them)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ARCHITECTURE}
        out["objectives"] = dict(self.objectives)
        if self.horizon is not None:
            out["horizon"] = self.horizon
        return out

    def settings(self, **run: Any) -> TrainSettings:
        """The schedule as TrainSettings; run: the rest (seed, precision, device). The stride is capped at
        the context length: windows further apart than they are long would leave events out."""
        stride = min(self.stride or self.context_len, self.context_len)
        return TrainSettings(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                             stride=stride, ema=self.ema, **run)

    def to_config(self) -> dict[str, Any]:
        """The JSON form the benchmark records (benchmarks/tuning.json): the architecture, then the
        schedule; horizon, weight_decay, stride and ema only where they differ from 'not used'."""
        config: dict[str, Any] = {**self.arch(), "event_fields": list(self.event_fields)}
        config.pop("horizon", None)
        config |= {k: getattr(self, k) for k in SCHEDULE}
        config |= {k: getattr(self, k) for k, off in OPTIONAL.items() if getattr(self, k) != off}
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Recipe:
        unknown = sorted(set(config) - {*ARCHITECTURE, *SCHEDULE, *OPTIONAL})
        if unknown:
            raise ValueError(f"recipe fields {unknown} are unknown; known: {[*ARCHITECTURE, *SCHEDULE, *OPTIONAL]}")
        return cls().but(**{**OPTIONAL, **config})  # an optional field left out is not used

    def but(self, **changes: Any) -> Recipe:
        """This recipe with some fields changed (event_fields may be a list)."""
        if "event_fields" in changes:
            changes["event_fields"] = tuple(changes["event_fields"])
        return replace(self, **changes)
