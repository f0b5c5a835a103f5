"""fmrec command line: train / evaluate / bench (and later finetune / export / embed).

    python -m fmrec train --data movielens100k --out runs/fm
    python -m fmrec evaluate --model runs/fm
    python -m fmrec tune                       # grid for the FM and RecTools SASRec/BERT4Rec/HSTU, chosen on validation
    python -m fmrec bench                      # the chosen configurations, 3 seeds: table and bootstrap interval
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmrec import checkpoint
from fmrec.data.sources import load_data
from fmrec.data.split import leave_one_out
from fmrec.train import TrainSettings, build_model, evaluate, pick_device, top_score_deciles, train
from fmrec.vocab import Vocabulary

# Defaults chosen on ML-100K's validation split (second-to-last events), see README.
ARCH_DEFAULTS: dict[str, Any] = {
    "d_model": 64, "n_layers": 2, "n_heads": 2, "context_len": 200, "dropout": 0.2, "item_id_dropout": 0.1,
    "event_fields": ("item", "action", "timeGap"), "objectives": {"nextItem": 1.0},
}


def _arch(args: argparse.Namespace) -> dict[str, Any]:
    arch = dict(ARCH_DEFAULTS)
    for key in ("d_model", "n_layers", "n_heads", "context_len", "dropout", "item_id_dropout"):
        value = getattr(args, key, None)
        if value is not None:
            arch[key] = value
    if args.event_fields:
        arch["event_fields"] = tuple(args.event_fields.split(","))
    if args.objectives:
        arch["objectives"] = {k: float(v) for k, v in (p.split("=") for p in args.objectives.split(","))}
    if args.horizon:
        arch["horizon"] = args.horizon
    return arch


def _settings(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                         precision=args.precision, device=args.device, stride=args.stride or _arch(args)["context_len"], ema=args.ema)


def _distributed(device: torch.device) -> tuple[int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; each rank gets its own GPU."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), device


def _leave_process_group() -> None:
    """After the last epoch every rank leaves the group; without this, gloo's threads abort the
    process at exit (SIGABRT), and torchrun reports a finished rank as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads) if args.threads else None
    log = load_data(args.data)
    split = leave_one_out(log)
    rank, device = _distributed(pick_device(args.device))
    model = build_model(log, **_arch(args)).to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    curve = train(model, split, _settings(args), stage=args.stage, state_path=out / "train_state.pt" if args.resume else None)
    train_s = time.perf_counter() - t0
    _leave_process_group()
    if rank != 0:
        return 0  # rank 0 evaluates and writes the version
    metrics = evaluate(model, split, args.stage)
    deciles = top_score_deciles(model, split, args.stage)
    meta = {"data": args.data, "dataFingerprint": log.fingerprint(), "featureFingerprint": log.feature_fingerprint(),
            "train_s": train_s, "metrics": metrics, "curve": curve, "settings": vars(_settings(args)),
            "topScoreDeciles": deciles}
    path = checkpoint.save(model, Path(args.out), meta, Vocabulary.from_log(split.log, split.train_mask(args.stage)))
    plot_curve(curve, Path(args.out) / "curves.png")
    (Path(args.out) / "metrics.json").write_text(json.dumps({**metrics, "train_s": train_s}, indent=2))
    print(json.dumps({"checkpoint": str(path), "train_s": round(train_s, 1), **{k: round(v, 4) for k, v in metrics.items()}}))
    return 0


def plot_curve(curve: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [r["epoch"] for r in curve]
    for key in sorted(k for k in curve[0] if k not in ("epoch", "seconds", "events_per_s")):
        ax.plot(epochs, [r[key] for r in curve], label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def cmd_finetune(args: argparse.Namespace) -> int:
    from fmrec.nn.adapters import AdaptedModel, build_adapter
    from fmrec.train import finetune, slice_users

    torch.set_num_threads(args.threads) if args.threads else None
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
    share = adapter.num_params() / fm.num_params()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_adapter(adapter, fm, out, args.task or out.name,
                            {"slice": args.slice, "minAction": args.min_action, "baseFingerprint": meta.get("dataFingerprint"),
                             "metrics": after, "topScoreDeciles": top_score_deciles(model, split, users=test_users)})
    result = {"slice": args.slice, "min_action": args.min_action, "users": int(len(test_users)), "adapter": args.adapter,
              "adapter_settings": adapter.settings(), "adapter_params": adapter.num_params(),
              "fm_params": fm.num_params(), "param_share": share, "train_s": train_s,
              "frozen_fm": before, "fm_plus_adapter": after}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    task = f"slice {args.slice or 'all users'}" + (f", next item rated >= {args.min_action}" if args.min_action else "")
    settings_text = ", ".join(f"{k} {v:g}" for k, v in adapter.settings().items())
    print(f"{task}: {len(test_users)} test users; adapter {args.adapter} ({settings_text}) adds {adapter.num_params():,} parameters "
          f"({100 * share:.2f}% of the FM's {fm.num_params():,}); trained in {train_s:.1f} s")
    print(f"{'':22} {'HR@10':>7} {'NDCG@10':>8} {'NDCG@20':>8}")
    for name, m in (("frozen FM", before), ("FM + adapter", after)):
        print(f"{name:22} {m['HR@10']:7.4f} {m['NDCG@10']:8.4f} {m['NDCG@20']:8.4f}")
    return 0


def adapter_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of --adapter's kind from the command line (fmrec.nn.adapters.build_adapter takes them)."""
    if args.adapter == "lora":
        return {"rank": args.rank, "alpha": args.alpha}
    if args.adapter == "distilled":
        return {"layers": args.layers, "width": args.width}
    return {"dim": args.dim}


def cmd_cold(args: argparse.Namespace) -> int:
    from fmrec.train import cold_items, evaluate_cold

    torch.set_num_threads(args.threads) if args.threads else None
    log = load_data("movielens100k")
    split = leave_one_out(log)
    cold = cold_items(log, args.share, args.seed)
    model = build_model(log, **_arch(args))
    train(model, split, _settings(args), withheld_items=cold)
    result = evaluate_cold(model, split, cold)
    users = int(result["fm_content_only"]["users"])
    print(f"\ncold items: {len(cold)} of {log.n_items} items withheld from training; {users} users whose test item is one of them;"
          f" ranked among the withheld items only")
    print(f"{'scorer':26} {'HR@10':>7} {'NDCG@10':>8} {'HR@20':>7}")
    for name, m in result.items():
        print(f"{name:26} {m['HR@10']:7.4f} {m['NDCG@10']:8.4f} {m['HR@20']:7.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Item embeddings (the output table) and user embeddings (newest state) as Parquet and NumPy."""
    import pandas as pd

    from fmrec.tokens import tokenize
    from fmrec.train import history_tensors

    torch.set_num_threads(args.threads) if args.threads else None
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


def cmd_export(args: argparse.Namespace) -> int:
    from fmrec.serving.export import export_triton, set_faults

    from fmrec.serving.artifact import Manifest

    adapters = [(task, Path(folder)) for task, _, folder in (a.rpartition("=") for a in args.adapter)]
    path = export_triton(Path(args.model), Path(args.repo), name=args.name, k=args.top_k, int8=args.int8, adapters=adapters)
    if args.fault_error_share or args.fault_latency_ms:
        set_faults(path, args.fault_error_share, args.fault_latency_ms)
        print(f"TEST ONLY: {path} fails {args.fault_error_share:.0%} of requests and answers {args.fault_latency_ms:g} ms late")
    tasks = ", ".join(Manifest.read(path / "1").tasks)
    print(f"wrote Triton model {path} (python backend{', int8 item table and blocks, fp16 input tables' if args.int8 else ''}, top {args.top_k}; "
          f"tasks: {tasks})")
    return 0


def cmd_serve_bench(args: argparse.Namespace) -> int:
    from fmrec.serving.bench import serve_bench

    torch.set_num_threads(args.threads) if args.threads else None
    _, meta = checkpoint.load(Path(args.model))
    split = leave_one_out(load_data(meta.get("data", "movielens100k")))
    r = serve_bench(Path(args.model), split, per_level=args.requests, k=args.top_k)
    q, sizes, lat = r["quality"], r["sizes"], r["latency"]
    assert isinstance(q, dict) and isinstance(sizes, dict) and isinstance(lat, dict)
    change = 100 * (q["int8"]["NDCG@10"] / q["fp32"]["NDCG@10"] - 1)
    print(f"\noffline NDCG@10: fp32 {q['fp32']['NDCG@10']:.4f}, int8 {q['int8']['NDCG@10']:.4f} ({change:+.2f}%); "
          f"exported model {sizes['fp32_bytes'] / 1e6:.2f} MB fp32, {sizes['int8_bytes'] / 1e6:.2f} MB int8 "
          f"(ratio {sizes['int8_bytes'] / sizes['fp32_bytes']:.2f})")
    print(f"{'model':12} {'concurrency':>11} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for key, m in lat.items():
        name, c = key.split("@")
        print(f"{name:12} {c:>11} {int(m['requests']):8d} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['throughput_rps']:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


def cmd_consolidation_bench(args: argparse.Namespace) -> int:
    from fmrec.serving.consolidation import consolidation_bench

    _, meta = checkpoint.load(Path(args.model))
    split = leave_one_out(load_data(meta.get("data", "movielens100k")))
    ns = tuple(int(n) for n in args.tasks.split(","))
    rows = consolidation_bench(Path(args.model), split, ns=ns, per_level=args.requests, k=args.top_k)
    print(f"\n{'tasks':>5} {'layout':16} {'artifact MiB':>12} {'RSS MiB':>8} {'PSS MiB':>8} {'concurrency':>11} {'req/s':>7} {'p99 ms':>7}")
    for r in rows:
        print(f"{int(r['tasks']):5d} {r['layout']:16} {r['artifact_mib']:12.1f} {r['rss_mib']:8.0f} {r['pss_mib']:8.0f} "
              f"{int(r['concurrency']):11d} {r['throughput_rps']:7.1f} {r['p99_ms']:7.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _protocol(args: argparse.Namespace) -> Any:
    from fmrec.benchmark import Protocol
    return Protocol(every=args.every, patience=args.patience, max_epochs=args.max_epochs)


def _models(args: argparse.Namespace) -> list[str]:
    from fmrec.benchmark import BASELINES
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in ("fm", *BASELINES)]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from fm,{','.join(BASELINES)}")
    return models


def cmd_tune(args: argparse.Namespace) -> int:
    from fmrec.benchmark import log_err, tune
    torch.set_num_threads(args.threads) if args.threads else None
    split = leave_one_out(load_data("movielens100k"))
    doc = tune(split, Path(args.tuning), _models(args), _protocol(args), seed=args.seed, log=log_err)
    for kind, pick in doc["chosen"].items():
        print(f"{kind:9} chosen on validation: NDCG@10 {pick['val_NDCG@10']:.4f} at epoch {pick['best_epoch']}  {pick['config']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fmrec.benchmark import bench, log_err, summarise, table
    torch.set_num_threads(args.threads) if args.threads else None
    split = leave_one_out(load_data("movielens100k"))
    seeds = [int(x) for x in args.seeds.split(",")]
    doc = bench(split, Path(args.tuning), Path(args.results), _models(args), seeds, _protocol(args), log=log_err)
    print(table(summarise(doc, split)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fmrec.benchmark import ablation_table, grid_table, summarise, table
    if args.tuning:
        doc = json.loads(Path(args.tuning).read_text())
        print(ablation_table(doc) if args.ablation else grid_table(doc))
        return 0
    path = Path(args.results)
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run `make bench` (python -m fmrec bench) first")
    print(table(summarise(json.loads(path.read_text()), leave_one_out(load_data("movielens100k")))))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fmrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default %(default)s)")
        sp.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")

    def training(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--epochs", type=int, default=40)
        sp.add_argument("--batch-size", type=int, default=128)
        sp.add_argument("--lr", type=float, default=3e-3)
        sp.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default %(default)s)")
        sp.add_argument("--ema", type=float, default=0.0,
                        help="decay per step of a moving average of the weights, evaluated and saved instead of the last ones; 0 = off")
        sp.add_argument("--seed", type=int, default=42)
        sp.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
        sp.add_argument("--d-model", type=int)
        sp.add_argument("--n-layers", type=int)
        sp.add_argument("--n-heads", type=int)
        sp.add_argument("--context-len", type=int)
        sp.add_argument("--dropout", type=float)
        sp.add_argument("--item-id-dropout", type=float)
        sp.add_argument("--event-fields", help="comma-separated, e.g. item,action,timeGap")
        sp.add_argument("--objectives", help="name=weight list, e.g. nextItem=1,multiToken=0.3")
        sp.add_argument("--horizon", type=int, help="items ahead for multiToken")
        sp.add_argument("--stride", type=int, help="sliding-window stride over long histories (default: context length)")

    t = sub.add_parser("train", help="train the foundation model and evaluate it on the test split")
    t.add_argument("--data", default="movielens100k")
    t.add_argument("--out", required=True, help="output folder (model.pt, config.json, metrics.json)")
    t.add_argument("--resume", action="store_true",
                   help="keep OUT/train_state.pt after every epoch and continue from it if present")
    t.add_argument("--stage", choices=["val", "test"], default="test",
                   help="val: train without each user's last two events and report validation metrics (for tuning)")
    common(t)
    training(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="HR/NDCG@10,20,50 of a trained model")
    e.add_argument("--model", required=True)
    e.add_argument("--stage", choices=["val", "test"], default="test")
    e.add_argument("--int8", action="store_true",
                   help="evaluate the int8 model that `export --int8` serves (a version folder written by it is int8 already)")
    common(e)
    e.set_defaults(func=cmd_evaluate)

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
    common(f)
    f.set_defaults(func=cmd_finetune)

    c = sub.add_parser("cold", help="cold-start: withhold items from training, score them from metadata only")
    c.add_argument("--share", type=float, default=0.1, help="share of items withheld (default %(default)s)")
    c.add_argument("--json", help="also write the result as JSON here")
    common(c)
    training(c)
    c.set_defaults(func=cmd_cold)

    em = sub.add_parser("embed", help="item and user embeddings to Parquet and NumPy")
    em.add_argument("--model", required=True)
    em.add_argument("--out", required=True)
    common(em)
    em.set_defaults(func=cmd_embed)

    x = sub.add_parser("export", help="write a Triton model repository (python backend, dynamic batching)")
    x.add_argument("--model", required=True)
    x.add_argument("--repo", required=True, help="model repository folder")
    x.add_argument("--name", default="fmrec")
    x.add_argument("--top-k", type=int, default=100)
    x.add_argument("--int8", action="store_true", help="store and serve int8 weights: the item table and the transformer blocks int8 (fp16 scales), the small input tables fp16 (fmrec.serving.quant)")
    x.add_argument("--adapter", action="append", default=[], metavar="[TASK=]DIR",
                   help="a TaskAdapter version (fmrec finetune --out DIR) served as TASK; repeat for more (default name: its own)")
    x.add_argument("--fault-error-share", type=float, default=0.0, metavar="P",
                   help="TEST ONLY: fail this share of requests with an internal error (to make a bad canary)")
    x.add_argument("--fault-latency-ms", type=float, default=0.0, metavar="MS", help="TEST ONLY: answer every batch this much later")
    x.set_defaults(func=cmd_export)

    sb = sub.add_parser("serve-bench", help="real Triton server: p50/p99/throughput at concurrency 1, 8, 32; fp32 vs int8")
    sb.add_argument("--model", required=True)
    sb.add_argument("--requests", type=int, default=600, help="requests per model and concurrency level")
    sb.add_argument("--top-k", type=int, default=100)
    sb.add_argument("--json")
    common(sb)
    sb.set_defaults(func=cmd_serve_bench)

    cb = sub.add_parser("consolidation-bench",
                        help="real Triton: N tasks as one model with N adapters vs N separate models (memory, size, req/s, p99)")
    cb.add_argument("--model", required=True)
    cb.add_argument("--tasks", default="1,4,16", help="comma-separated task counts (default %(default)s)")
    cb.add_argument("--requests", type=int, default=300, help="requests per layout and concurrency level")
    cb.add_argument("--top-k", type=int, default=100)
    cb.add_argument("--json")
    cb.set_defaults(func=cmd_consolidation_bench)

    def protocol(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--models", default="fm,sasrec,bert4rec,hstu", help="comma-separated: fm, sasrec, bert4rec, hstu")
        sp.add_argument("--tuning", default="benchmarks/tuning.json", help="grid results, one seed (default %(default)s)")
        sp.add_argument("--every", type=int, default=5, help="epochs between validation checks (default %(default)s)")
        sp.add_argument("--patience", type=int, default=3, help="checks without a validation gain before stopping (default %(default)s)")
        sp.add_argument("--max-epochs", type=int, default=100)
        sp.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")

    t = sub.add_parser("tune", help="grid for the FM and RecTools baselines, chosen on validation; resumes from --tuning")
    protocol(t)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_tune)

    b = sub.add_parser("bench", help="rerun every model's tuned configuration with several seeds: table, paired bootstrap interval")
    protocol(b)
    b.add_argument("--seeds", default="0,1,2")
    b.add_argument("--results", default="benchmarks/results.json", help="every run, per-user ranks included; resumes from it")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="print the benchmark table from --results without training")
    r.add_argument("--results", default="benchmarks/results.json")
    r.add_argument("--tuning", help="print this tuning grid (e.g. benchmarks/tuning.json) as a Markdown table instead")
    r.add_argument("--ablation", action="store_true", help="with --tuning: the FM's points against its base point (validation only)")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as err:  # bad input: say what and how to fix, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
