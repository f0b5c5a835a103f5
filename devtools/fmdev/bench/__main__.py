"""The model's benchmarks (developer tooling, not shipped):

    python -m fmdev.bench tune                  # grid for the FM and RecTools SASRec/BERT4Rec/HSTU, chosen on validation
    python -m fmdev.bench bench                 # the chosen configurations, 3 seeds: table and bootstrap interval
    python -m fmdev.bench report                # the table again from benchmarks/results.json, no training
    python -m fmdev.bench serve-bench --model runs/fm          # real Triton: latency and throughput, fp32 vs int8
    python -m fmdev.bench consolidation-bench --model runs/fm  # real Triton: N tasks as one model vs N models
    python -m fmdev.bench int8 --model runs/fm-s0 runs/fm-s1   # int8 vs fp32 offline: quality, top-10 agreement, size
    python -m fmdev.bench adapter-latency --model runs/fm --adapter lora=runs/liked-lora ...  # in-process cost per task

The FM point `tune` chooses is fmrec's default recipe (fmrec.train.recipe), which `fmrec train` trains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fmdev.bench.recsys.protocol import BASELINES, Protocol
from fmrec import checkpoint
from fmrec.cli import run
from fmrec.data.sources import load_data
from fmrec.data.split import leave_one_out


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def _protocol(args: argparse.Namespace) -> Protocol:
    return Protocol(every=args.every, patience=args.patience, max_epochs=args.max_epochs)


def _models(args: argparse.Namespace) -> list[str]:
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in ("fm", *BASELINES)]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from fm,{','.join(BASELINES)}")
    return models


def cmd_tune(args: argparse.Namespace) -> int:
    from fmdev.bench.recsys.grid import tune

    _threads(args)
    split = leave_one_out(load_data("movielens100k"))
    doc = tune(split, Path(args.tuning), _models(args), _protocol(args), seed=args.seed, log=log_stderr)
    for kind, pick in doc["chosen"].items():
        print(f"{kind:9} chosen on validation: NDCG@10 {pick['val_NDCG@10']:.4f} at epoch {pick['best_epoch']}  {pick['config']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fmdev.bench.recsys.grid import bench
    from fmdev.bench.recsys.report import summarise, table

    _threads(args)
    split = leave_one_out(load_data("movielens100k"))
    seeds = [int(x) for x in args.seeds.split(",")]
    doc = bench(split, Path(args.tuning), Path(args.results), _models(args), seeds, _protocol(args), log=log_stderr)
    print(table(summarise(doc, split)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fmdev.bench.recsys.report import ablation_table, grid_table, summarise, table

    if args.tuning:
        doc = json.loads(Path(args.tuning).read_text())
        print(ablation_table(doc) if args.ablation else grid_table(doc))
        return 0
    path = Path(args.results)
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run `make bench` (python -m fmdev.bench bench) first")
    print(table(summarise(json.loads(path.read_text()), leave_one_out(load_data("movielens100k")))))
    return 0


def cmd_serve_bench(args: argparse.Namespace) -> int:
    from fmdev.bench.serving import serve_bench

    _threads(args)
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
    from fmdev.bench.consolidation import consolidation_bench

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


def cmd_int8(args: argparse.Namespace) -> int:
    from fmdev.bench.int8 import compare, table

    _threads(args)
    rows = {}
    for model in args.model:
        _, meta = checkpoint.load(Path(model))
        rows[model] = compare(Path(model), leave_one_out(load_data(meta.get("data", "movielens100k"))))
        log_stderr(f"{model}: {rows[model]}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_adapter_latency(args: argparse.Namespace) -> int:
    from fmdev.bench.adapters import latency

    _threads(args)
    _, meta = checkpoint.load(Path(args.model))
    split = leave_one_out(load_data(meta.get("data", "movielens100k")))
    adapters = {}
    for item in args.adapter:
        task, _, path = item.partition("=")
        if not task or not path:
            raise ValueError(f"--adapter {item!r}: expected TASK=FOLDER, e.g. lora=runs/liked-lora")
        adapters[task] = Path(path)
    rows = latency(Path(args.model), adapters, split, batch=args.batch, repeats=args.repeats)
    print(f"{'task':12} {'median ms':>9} {'fastest ms':>10}   (Recommender.run, {args.batch} whole histories, "
          f"{args.repeats} batches after 3 warm-up, {torch.get_num_threads()} thread(s))")
    for task, r in rows.items():
        print(f"{task:12} {r['median_ms']:9.1f} {r['min_ms']:10.1f}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fmdev.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

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

    sb = sub.add_parser("serve-bench", help="real Triton server: p50/p99/throughput at concurrency 1, 8, 32; fp32 vs int8")
    sb.add_argument("--model", required=True)
    sb.add_argument("--requests", type=int, default=600, help="requests per model and concurrency level")
    sb.add_argument("--top-k", type=int, default=100)
    sb.add_argument("--json")
    sb.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    sb.set_defaults(func=cmd_serve_bench)

    cb = sub.add_parser("consolidation-bench",
                        help="real Triton: N tasks as one model with N adapters vs N separate models (memory, size, req/s, p99)")
    cb.add_argument("--model", required=True)
    cb.add_argument("--tasks", default="1,4,16", help="comma-separated task counts (default %(default)s)")
    cb.add_argument("--requests", type=int, default=300, help="requests per layout and concurrency level")
    cb.add_argument("--top-k", type=int, default=100)
    cb.add_argument("--json")
    cb.set_defaults(func=cmd_consolidation_bench)

    i8 = sub.add_parser("int8", help="int8 vs fp32 on trained FMs, offline: NDCG/HR@10, users whose top-10 changes, exported sizes")
    i8.add_argument("--model", required=True, nargs="+", help="one or more `fmrec train` output folders")
    i8.add_argument("--json")
    i8.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    i8.set_defaults(func=cmd_int8)

    al = sub.add_parser("adapter-latency", help="in-process Recommender.run per task over one batch of whole histories (median, fastest)")
    al.add_argument("--model", required=True)
    al.add_argument("--adapter", action="append", default=[], metavar="TASK=FOLDER", help="an adapter to serve beside the FM (repeatable)")
    al.add_argument("--batch", type=int, default=64)
    al.add_argument("--repeats", type=int, default=20)
    al.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    al.set_defaults(func=cmd_adapter_latency)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
