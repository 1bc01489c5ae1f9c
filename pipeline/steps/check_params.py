"""check-params: validate the whole of params.yaml, on every ``dvc repro``.

DVC reruns a stage only when a param it tracks changes, and each stage validates the file only
when it runs. A key nobody tracks (``calibration:`` for ``calibrate:``) would otherwise pass
unseen while DVC reports everything up to date. This stage is ``always_changed``, writes
nothing, and takes a fraction of a second (the quick check: no torch).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.params import load_params

log = logging.getLogger(__name__)


def run(root: Path = Path(".")) -> None:
    """Raise :class:`~pipeline.params.ParamsError` naming the key path of the first problem."""
    params = load_params(Path(root) / "params.yaml", quick=True)
    log.info("params.yaml: valid (%d tasks, %d compositions)", len(params.tasks), len(params.compositions))
