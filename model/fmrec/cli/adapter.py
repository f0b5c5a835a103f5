"""`fmrec finetune`: a task adapter trained on a frozen FM, and what it gains on its task."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmrec import checkpoint
from fmrec.cli.args import add_device_flags, set_threads
from fmrec.cli.report import adapter_table
from fmrec.data.sources import load_data
from fmrec.data.split import leave_one_out
from fmrec.eval.evaluate import evaluate, top_score_deciles
from fmrec.nn.adapters import AdaptedModel, build_adapter
from fmrec.train.finetune import finetune, slice_users
from fmrec.train.loop import TrainSettings, pick_device


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser("finetune", help="train a task adapter for a user slice on a frozen FM; shows the slice gain")
    f.add_argument("--model", required=True, help="trained FM folder")
    f.add_argument("--slice", default="", help="attribute=value[,value], e.g. region=us-9 or ageBand=18-24 (default: all users)")
    f.add_argument("--min-action", type=int, default=0,
                   help="task: next item rated at least this (4 = liked); 0 = any next item (default)")
    f.add_argument("--adapter", choices=["bottleneck", "head", "lora", "distilled"], default="bottleneck")
    f.add_argument("--dim", type=int, default=16, help="bottleneck width")
    f.add_argument("--rank", type=int, default=8, help="lora: rank of the updates of every attention projection")
    f.add_argument("--alpha", type=float, default=16.0, help="lora: the updates are scaled by alpha / rank")
    f.add_argument("--layers", type=int, default=1, help="distilled: the student's transformer blocks")
    f.add_argument("--width", type=int, default=32, help="distilled: the student's width")
    f.add_argument("--temperature", type=float, default=2.0, help="distilled: softens teacher and student distributions")
    f.add_argument("--soft-weight", type=float, default=0.5, help="distilled: weight of the KL to the teacher (1 - it: the hard loss)")
    f.add_argument("--out", required=True)
    f.add_argument("--task", help="the task name requests use to pick this adapter (default: the --out folder's name)")
    f.add_argument("--epochs", type=int, default=3)
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default %(default)s)")
    f.add_argument("--seed", type=int, default=42)
    add_device_flags(f)
    f.set_defaults(func=cmd_finetune)


def adapter_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of --adapter's kind from the command line (fmrec.nn.adapters.build_adapter takes them)."""
    if args.adapter == "lora":
        return {"rank": args.rank, "alpha": args.alpha}
    if args.adapter == "distilled":
        return {"layers": args.layers, "width": args.width}
    return {"dim": args.dim}


def cmd_finetune(args: argparse.Namespace) -> int:
    set_threads(args)
    fm, meta = checkpoint.load(Path(args.model), pick_device(args.device))
    log = load_data(meta.get("data", "movielens100k"))
    split = leave_one_out(log)
    if args.slice:
        attribute, _, values = args.slice.partition("=")
        users = slice_users(log, attribute, values.split(","))
    else:
        users = np.arange(1, log.n_users + 1)
    test_users = np.intersect1d(users, split.test_users)
    if args.min_action:
        test_users = np.array([u for u in test_users if split.log.action[split.target(int(u), "test")] >= args.min_action])
    before = evaluate(fm, split, users=test_users)
    adapter = build_adapter(fm, args.adapter, adapter_settings(args)).to(next(fm.parameters()).device)
    model = AdaptedModel(fm, adapter)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
    t0 = time.perf_counter()
    finetune(model, split, users, settings, min_action=args.min_action, temperature=args.temperature, soft_weight=args.soft_weight)
    train_s = time.perf_counter() - t0
    after = evaluate(model, split, users=test_users)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_adapter(adapter, fm, out, args.task or out.name,
                            {"slice": args.slice, "minAction": args.min_action, "baseFingerprint": meta.get("dataFingerprint"),
                             "metrics": after, "topScoreDeciles": top_score_deciles(model, split, users=test_users)})
    result = {"slice": args.slice, "min_action": args.min_action, "users": int(len(test_users)), "adapter": args.adapter,
              "adapter_settings": adapter.settings(), "adapter_params": adapter.num_params(),
              "fm_params": fm.num_params(), "param_share": adapter.num_params() / fm.num_params(), "train_s": train_s,
              "frozen_fm": before, "fm_plus_adapter": after}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(adapter_table(result))
    return 0
