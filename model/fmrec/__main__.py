"""fmrec command line: the foundation model, its task adapters and its export.

    python -m fmrec train --data movielens100k --out runs/fm     # the benchmark's chosen recipe unless flags say otherwise
    python -m fmrec evaluate --model runs/fm
    python -m fmrec finetune --model runs/fm --min-action 4 --out runs/liked
    python -m fmrec export --model runs/fm --repo runs/triton

The benchmarks that tune and measure it are developer tools: python -m fmdev.bench.
"""

from __future__ import annotations

import argparse
import sys

from fmrec.cli import adapter, cold, export, fm, run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fmrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in (fm, adapter, cold, export):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
