"""`fmrec train | evaluate | embed`: the foundation model itself."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fmrec import checkpoint
from fmrec.cli.args import add_device_flags, add_recipe_flags, recipe_from, set_threads, settings_from
from fmrec.cli.report import plot_curve
from fmrec.data.sources import load_data
from fmrec.data.split import leave_one_out
from fmrec.eval.evaluate import evaluate, top_score_deciles
from fmrec.tokens import tokenize
from fmrec.train import distributed
from fmrec.train.batching import history_tensors
from fmrec.train.loop import pick_device
from fmrec.train.pretrain import build_model, pretrain
from fmrec.vocab import Vocabulary


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("train", help="train the foundation model (default: the benchmark's chosen recipe) and evaluate it on the test split")
    t.add_argument("--data", default="movielens100k")
    t.add_argument("--out", required=True, help="output folder (model.pt, config.json, metrics.json)")
    t.add_argument("--resume", action="store_true",
                   help="keep OUT/train_state.pt after every epoch and continue from it if present")
    t.add_argument("--stage", choices=["val", "test"], default="test",
                   help="val: train without each user's last two events and report validation metrics (for tuning)")
    add_device_flags(t)
    add_recipe_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="HR/NDCG@10,20,50 of a trained model")
    e.add_argument("--model", required=True)
    e.add_argument("--stage", choices=["val", "test"], default="test")
    e.add_argument("--int8", action="store_true",
                   help="evaluate the int8 model that `export --int8` serves (a version folder written by it is int8 already)")
    add_device_flags(e)
    e.set_defaults(func=cmd_evaluate)

    em = sub.add_parser("embed", help="item and user embeddings to Parquet and NumPy")
    em.add_argument("--model", required=True)
    em.add_argument("--out", required=True)
    add_device_flags(em)
    em.set_defaults(func=cmd_embed)


def cmd_train(args: argparse.Namespace) -> int:
    set_threads(args)
    log = load_data(args.data)
    split = leave_one_out(log)
    rank, device = distributed.join(pick_device(args.device))
    model = build_model(log, **recipe_from(args).arch()).to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_from(args)
    t0 = time.perf_counter()
    curve = pretrain(model, split, settings, stage=args.stage, state_path=out / "train_state.pt" if args.resume else None)
    train_s = time.perf_counter() - t0
    distributed.leave()
    if rank != 0:
        return 0  # rank 0 evaluates and writes the version
    metrics = evaluate(model, split, args.stage)
    deciles = top_score_deciles(model, split, args.stage)
    meta = {"data": args.data, "dataFingerprint": log.fingerprint(), "featureFingerprint": log.feature_fingerprint(),
            "train_s": train_s, "metrics": metrics, "curve": curve, "settings": vars(settings),
            "topScoreDeciles": deciles}
    path = checkpoint.save(model, out, meta, Vocabulary.from_log(split.log, split.train_mask(args.stage)))
    plot_curve(curve, out / "curves.png")
    (out / "metrics.json").write_text(json.dumps({**metrics, "train_s": train_s}, indent=2))
    print(json.dumps({"checkpoint": str(path), "train_s": round(train_s, 1), **{k: round(v, 4) for k, v in metrics.items()}}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, meta = checkpoint.load(Path(args.model), pick_device(args.device))
    log = load_data(meta.get("data", "movielens100k"))
    if log.fingerprint() != meta.get("dataFingerprint"):
        print(f"warning: data fingerprint differs from the one {args.model} was trained on", file=sys.stderr)
    if args.int8:
        from fmrec.serving.infer import quantize_int8

        model = quantize_int8(model)
    print(json.dumps(evaluate(model, leave_one_out(log), args.stage)))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Item embeddings (the output table) and user embeddings (newest state) as Parquet and NumPy."""
    import pandas as pd

    set_threads(args)
    model, meta = checkpoint.load(Path(args.model))
    log = load_data(meta.get("data", "movielens100k"))
    split = leave_one_out(log)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        items = model.item_table()[1:].numpy()  # row i = item code i+1
    users_codes = split.test_users
    tok = tokenize(split.log)
    chunks = []
    for start in range(0, len(users_codes), 256):
        part = users_codes[start:start + 256]
        inputs = history_tensors(tok, split, part, "full", model.cfg.context_len, model.cfg.event_fields, torch.device("cpu"))
        chunks.append(model.score_next(inputs)[1].numpy())
    users = np.concatenate(chunks)
    np.save(out / "item_embeddings.npy", items)
    np.save(out / "user_embeddings.npy", users)
    pd.DataFrame({"item_id": list(log.item_ids), "embedding": list(items)}).to_parquet(out / "item_embeddings.parquet")
    pd.DataFrame({"user_id": [log.user_ids[u - 1] for u in users_codes], "embedding": list(users)}).to_parquet(out / "user_embeddings.parquet")
    print(f"wrote {items.shape[0]} item and {users.shape[0]} user embeddings of width {items.shape[1]} to {out}")
    return 0
