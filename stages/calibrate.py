"""calibrate: pick the task's calibration examples (seeded) → artifacts/<task>/calibration/."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from pipeline import tracking
from pipeline.meta import write_meta
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from stages._args import stage_main
from taso.data import read_rows
from taso.io import atomic_path


def run(task: str, root: Path = Path(".")) -> Path:
    params = load_params(root / "params.yaml")
    spec, n, seed = params.spec(task), params.calibrate.n, params.seed
    rows = read_rows(spec, "train", seed=seed)
    source_digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    used = {"seed": seed, "calibrate": params.calibrate.model_dump(), "task": params.task(task).model_dump()}
    out = TaskPaths(root, task).calibration
    with tracking.stage_run(root, stage="calibrate", task=task, params=used, inputs={"source": source_digest}) as mlrun:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            lines = "".join(json.dumps(rows[i], sort_keys=True, default=str) + "\n" for i in chosen)
            (tmp / "calibration.jsonl").write_text(lines)
            digest = hashlib.sha256(lines.encode()).hexdigest()
            write_meta(
                tmp,
                stage="calibrate",
                task=task,
                root=root,
                params=used,
                inputs={"source": source_digest},
                outputs={"calibration": digest},
                n=len(chosen),
                n_source=len(rows),
                source=spec.source,
            )
        mlrun.log_outputs({"calibration": digest})
        mlrun.log_metrics({"n_calibration": len(chosen), "n_source": len(rows)})
    return out


def read_calibration(folder: Path) -> list[dict]:
    """The examples a calibrate stage chose."""
    return [json.loads(line) for line in (Path(folder) / "calibration.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    stage_main(run)
