"""Flags several commands share: where to run, and the FM's recipe (defaults: fmrec.train.recipe)."""

from __future__ import annotations

import argparse

import torch

from fmrec.train.loop import TrainSettings
from fmrec.train.recipe import Recipe

DEFAULT = Recipe()


def add_device_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default %(default)s)")
    sp.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def add_recipe_flags(sp: argparse.ArgumentParser) -> None:
    """Every field of the recipe, defaulting to the benchmark's choice, plus the run's seed and precision."""
    d = DEFAULT
    sp.add_argument("--epochs", type=int, default=d.epochs, help="(default %(default)s)")
    sp.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    sp.add_argument("--lr", type=float, default=d.lr, help="(default %(default)s)")
    sp.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (default %(default)s)")
    sp.add_argument("--ema", type=float, default=d.ema,
                    help="decay per step of a moving average of the weights, evaluated and saved instead of the last ones; "
                         "0 = off (default %(default)s)")
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    sp.add_argument("--d-model", type=int, default=d.d_model, help="(default %(default)s)")
    sp.add_argument("--n-layers", type=int, default=d.n_layers, help="(default %(default)s)")
    sp.add_argument("--n-heads", type=int, default=d.n_heads, help="(default %(default)s)")
    sp.add_argument("--context-len", type=int, default=d.context_len, help="(default %(default)s)")
    sp.add_argument("--dropout", type=float, default=d.dropout, help="(default %(default)s)")
    sp.add_argument("--item-id-dropout", type=float, default=d.item_id_dropout, help="(default %(default)s)")
    sp.add_argument("--event-fields", default=",".join(d.event_fields), help="comma-separated (default %(default)s)")
    sp.add_argument("--objectives", default=",".join(f"{k}={v:g}" for k, v in d.objectives.items()),
                    help="name=weight list, e.g. nextItem=1,multiToken=0.3 (default %(default)s)")
    sp.add_argument("--horizon", type=int, help="items ahead for multiToken")
    sp.add_argument("--stride", type=int, default=d.stride,
                    help="sliding-window stride over long histories, at most the context length; 0 = the context length "
                         "(default %(default)s)")


def recipe_from(args: argparse.Namespace) -> Recipe:
    """The recipe the flags describe; an empty --event-fields or --objectives keeps the default."""
    return DEFAULT.but(
        d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, context_len=args.context_len, dropout=args.dropout,
        item_id_dropout=args.item_id_dropout,
        event_fields=args.event_fields.split(",") if args.event_fields else DEFAULT.event_fields,
        objectives={k: float(v) for k, v in (p.split("=") for p in args.objectives.split(","))} if args.objectives else DEFAULT.objectives,
        horizon=args.horizon or None, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
        stride=args.stride or None, ema=args.ema)


def settings_from(args: argparse.Namespace) -> TrainSettings:
    return recipe_from(args).settings(seed=args.seed, precision=args.precision, device=args.device)
