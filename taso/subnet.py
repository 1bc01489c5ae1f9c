"""LoSiA's subnet search, as pure functions: importance terms, their EMAs, the greedy re-localization,
the asynchronous per-layer schedule and the learning rate with re-warm (../shared/METHODS.md §1).

Everything here takes tensors and integers and returns new ones, so each rule is tested against a
hand computation; :class:`taso.methods.losia.Losia` strings them together during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Taylor = Literal["param_mix", "param_first", "param_second"]
Strategy = Literal["best", "rows_cols", "rows_first", "cols_first"]
CANDIDATES = ("rows_cols", "rows_first", "cols_first")


def taylor_importance(weight: torch.Tensor, grad: torch.Tensor, kind: Taylor = "param_mix") -> torch.Tensor:
    """``I`` of one step in fp32, from ``J = W ⊙ G``: ``|J − ½J⊙J|`` (param_mix), ``|J|`` (first) or ``J⊙J`` (second)."""
    j = weight.float() * grad.float()
    if kind == "param_mix":
        return (j - 0.5 * j * j).abs()
    if kind == "param_first":
        return j.abs()
    if kind == "param_second":
        return j * j
    raise ValueError(f"unknown Taylor type {kind!r}; choose param_mix, param_first or param_second")


@dataclass
class Sensitivity:
    """The sensitivity EMA ``Ī`` and uncertainty EMA ``Ū`` of one matrix over one time slot (start at 0)."""

    mean: torch.Tensor
    uncertainty: torch.Tensor

    @classmethod
    def zeros(cls, shape, device=None) -> Sensitivity:
        return cls(torch.zeros(shape, device=device), torch.zeros(shape, device=device))

    def update(self, importance: torch.Tensor, beta1: float, beta2: float) -> None:
        """``Ī ← β1·Ī + (1−β1)·I``, then ``Ū ← β2·Ū + (1−β2)·|I − Ī|`` with the new ``Ī``."""
        self.mean.mul_(beta1).add_(importance, alpha=1 - beta1)
        self.uncertainty.mul_(beta2).add_((importance - self.mean).abs(), alpha=1 - beta2)

    def score(self) -> torch.Tensor:
        """``S = Ī ⊙ Ū``."""
        return self.mean * self.uncertainty


def block_mass(score: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> float:
    """``Σ_{i∈R, j∈C} S_ij``."""
    return float(score.index_select(0, rows).index_select(1, cols).sum())


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    # A stable sort breaks ties by index, so equal scores pick the same rows on every machine.
    return torch.sort(torch.argsort(values, descending=True, stable=True)[:k]).values


def candidates(score: torch.Tensor, k_rows: int, k_cols: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The three greedy subnets of ``score`` (sorted index tensors):

    - ``rows_cols``: the top rows of ``S·1`` and the top columns of ``1ᵀS``;
    - ``rows_first``: those rows, then the top columns of ``1ᵀ S[R, :]``;
    - ``cols_first``: those columns, then the top rows of ``S[:, C]·1``.
    """
    rows, cols = _top(score.sum(1), k_rows), _top(score.sum(0), k_cols)
    return {
        "rows_cols": (rows, cols),
        "rows_first": (rows, _top(score.index_select(0, rows).sum(0), k_cols)),
        "cols_first": (_top(score.index_select(1, cols).sum(1), k_rows), cols),
    }


def relocalize(
    score: torch.Tensor, k_rows: int, k_cols: int, strategy: Strategy = "best"
) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """The next subnet: ``(rows, cols, candidate, mass)``; ``best`` keeps the candidate of largest block
    mass (the first of :data:`CANDIDATES` on a tie), any other strategy that one candidate."""
    found = candidates(score, k_rows, k_cols)
    names = CANDIDATES if strategy == "best" else (strategy,)
    if strategy != "best" and strategy not in found:
        raise ValueError(f"unknown strategy {strategy!r}; choose best, {', '.join(CANDIDATES)}")
    masses = {n: block_mass(score, *found[n]) for n in names}
    best = max(names, key=lambda n: masses[n])  # max keeps the first of equals
    return (*found[best], best, masses[best])


def overlap(old: torch.Tensor, new: torch.Tensor) -> float:
    """The share of ``new``'s indices that ``old`` already held."""
    return len(set(old.tolist()) & set(new.tolist())) / max(1, len(new))


@dataclass(frozen=True)
class Schedule:
    """Which layer records importance and which re-localizes at each step.

    ``asynchronous``: ``slot(s) = ⌊s/T⌋ mod L``; layer ``l`` records on the steps of its slot and
    re-localizes on the slot's last step, so one layer moves at a time, each every ``L·T`` steps.
    ``all``: every layer records on every step and all re-localize together every ``T`` steps.
    """

    period: int
    layers: int
    kind: Literal["asynchronous", "all"] = "asynchronous"

    def recording(self, step: int) -> list[int]:
        """The layers whose full gradient feeds the importance EMAs at ``step``."""
        return list(range(self.layers)) if self.kind == "all" else [(step // self.period) % self.layers]

    def relocalizing(self, step: int) -> list[int]:
        """The layers that pick a new subnet after the update of ``step``."""
        return self.recording(step) if step % self.period == self.period - 1 else []

    def starts_slot(self, step: int) -> bool:
        """Whether ``step`` is the first of a slot (the EMAs restart from zero)."""
        return step % self.period == 0


def auto_period(total_steps: int, layers: int, cycles: int) -> int:
    """A period short enough that every layer re-localizes ``cycles`` times in a run of ``total_steps``.

    The paper's 50-150 steps per slot assume runs of thousands of steps; the demo's 125 steps over
    6 layers would not see one full cycle at 50.
    """
    return max(1, total_steps // (cycles * layers))


def cosine(u: float, floor: float) -> float:
    """``ρ + (1−ρ)·½(1 + cos(π·u))``: 1 at ``u = 0``, the floor ``ρ`` at ``u = 1``."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(u, 0.0), 1.0)))


def rewarm_factor(step: int, total: int, warmup: int, period: int, last_move: int | None, floor: float) -> float:
    """LoSiA's per-layer rate factor λ at ``step`` (METHODS.md §1), ``last_move`` the layer's latest re-localization:

    warm-up ``t/W0`` while ``t < W0``; a linear re-warm ``((t − t_r)/T)·cos(t_r/(N − W0))`` for ``T``
    steps after a re-localization; otherwise ``cos((t − W0)/(N − W0))``.
    """
    if step < warmup:
        return step / warmup
    span = max(1, total - warmup)
    if last_move is not None and 0 <= step - last_move < period:
        return (step - last_move) / period * cosine(last_move / span, floor)
    return cosine((step - warmup) / span, floor)


def block_params(shapes, p: float) -> int:
    """Parameters of LoSiA's blocks at rank factor ``p`` over matrices of ``shapes`` ``(m, n)``."""
    return sum(int(p * m) * int(p * n) for m, n in shapes)


def p_for_budget(shapes, budget: int) -> float:
    """The largest ``p`` (to 1e-6) whose blocks hold at most ``budget`` parameters: LoSiA at another
    method's count, e.g. LoRA r=1's ``Σ (m + n)``."""
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if block_params(shapes, mid) <= budget else (lo, mid)
    return lo
