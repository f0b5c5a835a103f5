"""`fmrec export`: a trained FM (and its task adapters) as a Triton model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from fmrec.serving.artifact import Manifest
from fmrec.serving.export import export_triton, set_faults


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def cmd_export(args: argparse.Namespace) -> int:
    adapters = [(task, Path(folder)) for task, _, folder in (a.rpartition("=") for a in args.adapter)]
    path = export_triton(Path(args.model), Path(args.repo), name=args.name, k=args.top_k, int8=args.int8, adapters=adapters)
    if args.fault_error_share or args.fault_latency_ms:
        set_faults(path, args.fault_error_share, args.fault_latency_ms)
        print(f"TEST ONLY: {path} fails {args.fault_error_share:.0%} of requests and answers {args.fault_latency_ms:g} ms late")
    tasks = ", ".join(Manifest.read(path / "1").tasks)
    print(f"wrote Triton model {path} (python backend{', int8 item table and blocks, fp16 input tables' if args.int8 else ''}, top {args.top_k}; "
          f"tasks: {tasks})")
    return 0
