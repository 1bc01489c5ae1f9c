"""analyze: how the tasks' core regions relate → artifacts/analysis/ (overlap heatmap, per-layer profiles).

Covers the tasks that derive their own mask (a task that reuses a mask would only echo
its source). Pairwise Jaccard overlap of kept rows and columns, overall and per module,
and each task's kept fraction of rows and columns per layer.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import plots, sources, tracking
from pipeline.meta import write_meta
from pipeline.params import load_params
from pipeline.paths import analysis_dir
from taso.io import atomic_path, write_csv, write_json
from taso.masks import layer_profile, overlap


def run(root: Path = Path(".")) -> Path:
    """Write ``overlap.json``/``.png`` and ``layers.csv``/``.png`` (placeholders when no task derives a mask)."""
    params = load_params(root / "params.yaml")
    tasks = [t for t in params.tasks if params.scores(t)]
    masks = {t: sources.own_mask(params, root, t) for t in tasks}
    used = {"mask": params.mask.model_dump(), "tasks": tasks}
    inputs = {t: m.digest for t, m in masks.items()}
    out = analysis_dir(root)
    with tracking.stage_run(
        root,
        project=params,
        stage="analyze",
        task="all",
        params=used,
        inputs=inputs,
    ) as mlrun:
        report = overlap(masks)
        pairs = report["overall"]
        profiles = {t: layer_profile(m) for t, m in masks.items()}
        with atomic_path(out) as tmp:
            tmp.mkdir()
            write_json(tmp / "overlap.json", {"tasks": tasks, **report})
            rows = ({"task": t, **row} for t, profile in profiles.items() for row in profile)
            write_csv(tmp / "layers.csv", rows, ["task", "layer", "rows", "cols"])
            if tasks:
                matrix = {k: [[pairs[a][b][k] for b in tasks] for a in tasks] for k in ("rows", "cols")}
                plots.overlap_heatmap(tasks, matrix["rows"], matrix["cols"], tmp / "overlap.png")
                plots.layer_profiles(profiles, tmp / "layers.png")
            else:  # every task reuses a mask: nothing task-aligned to compare, but DVC expects the outs
                for name in ("overlap.png", "layers.png"):
                    plots.placeholder(
                        tmp / name, "no task derives its own mask (mask_source: own, a method with a region)"
                    )
            write_meta(tmp, stage="analyze", task="all", root=root, params=used, inputs=inputs)
        for name in ("overlap.png", "layers.png", "overlap.json", "layers.csv"):
            mlrun.log_artifact(out / name, "analysis")
        mlrun.log_metrics(
            {f"jaccard_rows.{a}.{b}": pairs[a][b]["rows"] for i, a in enumerate(tasks) for b in tasks[i + 1 :]}
            | {f"jaccard_cols.{a}.{b}": pairs[a][b]["cols"] for i, a in enumerate(tasks) for b in tasks[i + 1 :]}
        )
    return out
