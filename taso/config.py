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
class LosiaConfig:
    """LoSiA's knobs (../shared/METHODS.md §1); the defaults are the paper's unless a comment says why not."""

    p: float = 0.125  # rank factor: a block of int(p·m) rows × int(p·n) columns per matrix (paper: 1/8)
    period: int | None = None  # steps per layer slot T; None: short enough for `cycles` moves per layer
    cycles: int = 3  # with period None: each layer re-localizes this often in the run
    beta1: float = 0.85  # sensitivity EMA
    beta2: float = 0.85  # uncertainty EMA
    taylor: str = "param_mix"  # importance term: param_mix |J - J²/2|, param_first |J|, param_second J²
    schedule: str = "asynchronous"  # one layer moves at a time; or all (every layer every period)
    strategy: str = "best"  # best of the three greedy subnets by block mass; or rows_cols, rows_first, cols_first
    min_lr_ratio: float = 0.1  # floor of the cosine schedule
    start: str = "random"  # first subnets: random (seeded); mask: from the task's mask (a warm start)


@dataclass(frozen=True)
class ImpConfig:
    """IMP's search (train.method: imp): rounds of training, magnitude pruning and rewinding."""

    q: float = 0.5  # fraction of the remaining rows and columns dropped per round: mask.p 0.25 in 2 rounds
    steps: int = 50  # training steps per round (the final training runs train's full schedule)
    rule: str = "global"  # ranked across matrices, as mask.rule's default; or per_matrix


@dataclass(frozen=True)
class MethodConfig:
    """What every method is built from; a method reads the fields it uses. The defaults are the pipeline's."""

    rank: int = 4  # at TASO's p 0.25, LoRA r=1's parameter count
    alpha: float = 8.0  # update scale alpha/rank = 2
    dropout: float = 0.0
    targets: TargetSpec = "all-linear"
    seed: int = 0
    losia: LosiaConfig = LosiaConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of one training run; these defaults are the pipeline's (params.yaml gives the reasons)."""

    lr: float = 1e-3
    gamma: float = 0.5
    head_lr: float | None = 0.03  # None: the head learns at lr
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
