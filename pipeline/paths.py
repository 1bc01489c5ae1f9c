"""Where each stage's artifacts live (mirrors the outs in dvc.yaml).

Per task under ``artifacts/<task>/``, except importance maps: they form one tree,
``artifacts/importance/<task>/``, because compositions read across tasks, and a stage
that depends on that whole tree can never depend on its own masks (score reads no mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from taso.names import ADAPTER_WEIGHTS, IMPORTANCE_FILE


@dataclass(frozen=True)
class TaskPaths:
    """The artifact paths of one task under a project root."""

    root: Path
    task: str

    @property
    def dir(self) -> Path:
        return self.root / "artifacts" / self.task

    def data_file(self, split: str) -> Path:
        """The data stage's fingerprint of ``split`` (``train`` or ``eval``): what the stages reading it depend on."""
        return self.dir / "data" / f"{split}.json"

    calibration = property(lambda self: self.dir / "calibration")
    calibration_file = property(lambda self: self.calibration / "calibration.jsonl")
    importance = property(lambda self: importance_tree(self.root) / self.task)
    importance_file = property(lambda self: self.importance / IMPORTANCE_FILE)
    heatmap = property(lambda self: self.dir / "importance_heatmap.png")
    mask = property(lambda self: self.dir / "mask")
    imp_rounds = property(lambda self: self.dir / "imp_rounds.csv")  # IMP: one row per pruning round
    # The region a method found while training (LoSiA's last subnets) and how it moved.
    subnet = property(lambda self: self.dir / "subnet")
    subnet_history = property(lambda self: self.dir / "subnet_history.csv")
    adapter = property(lambda self: self.dir / "adapter")
    adapter_weights = property(lambda self: self.adapter / ADAPTER_WEIGHTS)
    train_curve = property(lambda self: self.dir / "train_curve.csv")
    train_metrics = property(lambda self: self.dir / "train.json")
    metrics = property(lambda self: self.dir / "metrics.json")
    promotion = property(lambda self: self.dir / "promotion.json")
    # Checkpoints are scratch state for resuming, not artifacts: outside DVC's outs, git-ignored.
    checkpoints = property(lambda self: self.root / "checkpoints" / self.task)


def importance_tree(root: Path) -> Path:
    """Every task's importance map, ``artifacts/importance/<task>/``."""
    return Path(root) / "artifacts" / "importance"


def compositions_tree(root: Path) -> Path:
    """Every composition's mask, ``artifacts/compositions/<name>/mask/``: one folder, so a task's
    derive-mask can depend on it whatever composition its ``mask_source`` names (it holds a
    committed README, so it exists before any composition does)."""
    return Path(root) / "artifacts" / "compositions"


def composition_dir(root: Path, name: str) -> Path:
    """The mask folder of a composition in params.yaml ``compositions`` (the compose stage's out)."""
    return compositions_tree(root) / name / "mask"


def analysis_dir(root: Path) -> Path:
    """Cross-task analysis: task overlap and per-layer profiles of the masks."""
    return Path(root) / "artifacts" / "analysis"
