"""The shared command line of every stage module: ``python -m stages.<name> --task NAME``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path


def stage_main(run: Callable[..., object]) -> None:
    """Parse ``--task`` and ``--root``, run the stage, and turn known errors into one clear line."""
    parser = argparse.ArgumentParser(description=run.__module__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.errors import USER_ERRORS
    from taso.train import TrainingInterrupted

    try:
        run(args.task, args.root)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(130)
