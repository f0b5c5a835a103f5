"""`fmrec cold`: withhold items from training, then score them from their metadata alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmrec.cli.args import add_device_flags, add_recipe_flags, recipe_from, set_threads, settings_from
from fmrec.cli.report import cold_table
from fmrec.data.sources import load_data
from fmrec.data.split import leave_one_out
from fmrec.eval.cold import cold_items, evaluate_cold
from fmrec.train.pretrain import build_model, pretrain


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("cold", help="cold-start: withhold items from training, score them from metadata only")
    c.add_argument("--share", type=float, default=0.1, help="share of items withheld (default %(default)s)")
    c.add_argument("--json", help="also write the result as JSON here")
    add_device_flags(c)
    add_recipe_flags(c)
    c.set_defaults(func=cmd_cold)


def cmd_cold(args: argparse.Namespace) -> int:
    set_threads(args)
    log = load_data("movielens100k")
    split = leave_one_out(log)
    cold = cold_items(log, args.share, args.seed)
    model = build_model(log, **recipe_from(args).arch())
    pretrain(model, split, settings_from(args), withheld_items=cold)
    result = evaluate_cold(model, split, cold)
    print(cold_table(result, len(cold), log.n_items))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
