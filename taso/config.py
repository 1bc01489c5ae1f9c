"""What a method and a training run are built from: plain dataclasses whose defaults are the pipeline's.

Kept free of torch, so that params.yaml's schema (which takes its defaults from here) loads in
a fraction of a second: ``dvc repro`` checks the whole file on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taso.targets import TargetSpec


@dataclass(frozen=True)
class MethodConfig:
    """What every method is built from; a method reads the fields it uses. The defaults are the pipeline's."""

    rank: int = 4  # at TASO's p 0.25, LoRA r=1's parameter count
    alpha: float = 8.0  # update scale alpha/rank = 2
    dropout: float = 0.0
    targets: TargetSpec = "all-linear"
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of one training run; these defaults are the pipeline's (params.yaml gives the reasons)."""

    lr: float = 1e-3
    gamma: float = 0.5
    head_lr: float | None = None
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 16
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    group_by_length: bool = False
    checkpoint_every: int = 50
    log_every: int = 10
    bf16: bool = False  # forward under CPU bf16 autocast; weights, gradients and optimizer stay fp32
