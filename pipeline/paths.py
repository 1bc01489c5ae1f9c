"""Where each stage's artifacts live: ``artifacts/<task>/...`` (mirrors the outs in dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskPaths:
    """The artifact paths of one task under a project root."""

    root: Path
    task: str

    @property
    def dir(self) -> Path:
        return self.root / "artifacts" / self.task

    calibration = property(lambda self: self.dir / "calibration")
    importance = property(lambda self: self.dir / "importance")
    heatmap = property(lambda self: self.dir / "importance_heatmap.png")
    mask = property(lambda self: self.dir / "mask")
    adapter = property(lambda self: self.dir / "adapter")
    train_curve = property(lambda self: self.dir / "train_curve.csv")
    train_metrics = property(lambda self: self.dir / "train.json")
    metrics = property(lambda self: self.dir / "metrics.json")
    # Checkpoints are scratch state for resuming, not artifacts: outside DVC's outs, git-ignored.
    checkpoints = property(lambda self: self.root / "checkpoints" / self.task)
