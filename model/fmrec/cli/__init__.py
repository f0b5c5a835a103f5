"""The fmrec command line, one module per command group; fmrec.__main__ only dispatches.

    fm        train, evaluate, embed       the foundation model
    adapter   finetune                     a task adapter on a frozen FM
    cold      cold                         cold-start evaluation
    export    export                       a Triton model repository
    args      the flags several commands share (device, threads, the recipe)
    report    what the commands print and plot
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run(parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None = None) -> int:
    """Parse argv and run the chosen command (its `func`); bad input (a missing file, a value out of
    range) is one line on stderr naming what to fix and exit status 2, never a traceback."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
