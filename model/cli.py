"""What the model's command lines share (``train.py``, ``evaluate.py``, ``routers.py``).

Each command's ``main(argv)`` returns its result to Python callers and tests; its ``cli()``
(the console entry point in pyproject.toml, and ``__main__``) turns a missing file or a bad
value into one line on stderr and exit status 1 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from model.data.sources import Source, eval_source


def run(main: Callable[[], object]) -> None:
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--split``, ``--count``, ``--seed``: the split a command reads
    (``split_from_args``)."""
    parser.add_argument("--data", required=True, help="'synthetic' or a PASCAL_MT root")
    parser.add_argument("--split", default="val", help="synthetic: val/test; PASCAL: train/val")
    parser.add_argument("--count", type=int, default=200, help="images (0: a whole PASCAL split)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scenes' seed")


def split_from_args(args: argparse.Namespace, size: int) -> Source:
    """The held-out split ``add_split_arguments`` named, at ``size`` pixels (synthetic)."""
    return eval_source(args.data, args.split, args.count, size, args.seed)
