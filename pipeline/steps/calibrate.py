"""calibrate: check every split of the task, then pick its calibration examples (seeded) → artifacts/<task>/calibration/."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline import tracking
from pipeline.meta import write_meta, write_skipped
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from pipeline.steps.data import read_split
from taso.data import calibration_sample, to_jsonl
from taso.io import atomic_path


def run(task: str, root: Path = Path(".")) -> Path:
    """Write ``calibration.jsonl`` (the chosen examples) and ``meta.json``; a method without a region skips."""
    params = load_params(root / "params.yaml")
    paths = TaskPaths(root, task)
    out = paths.calibration
    spec, n, seed = params.spec(task), params.calibrate.n, params.seed
    if not params.scores(task):
        return write_skipped(out, stage="calibrate", task=task, root=root, reason=params.why_not_scored(task))
    rows, data_digest = read_split(root, spec, "train", seed)  # every split was checked by the data stage
    chosen = calibration_sample(rows, n, seed)
    used = {"seed": seed, "calibrate": params.calibrate.model_dump(), "task": params.task(task).model_dump()}
    with tracking.stage_run(
        root,
        project=params,
        stage="calibrate",
        task=task,
        params=used,
        inputs={"data": data_digest},
    ) as mlrun:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            lines = to_jsonl(chosen)
            (tmp / paths.calibration_file.name).write_text(lines)
            digest = hashlib.sha256(lines.encode()).hexdigest()
            write_meta(
                tmp,
                stage="calibrate",
                task=task,
                root=root,
                params=used,
                inputs={"data": data_digest},
                outputs={"calibration": digest},
                n=len(chosen),
                n_source=len(rows),
                source=spec.source,
            )
        mlrun.log_outputs({"calibration": digest})
        mlrun.log_metrics({"n_calibration": len(chosen), "n_source": len(rows)})
    return out
