"""Learning rates: sparsity-scaled optimizer groups (the shape of PEFT's LoRA+) and the default schedule.

A module that keeps a fraction ρ of a dense LoRA's parameters moves its update less per
step, so its adapter learns at ``lr·(1/ρ)^γ``; ``γ = 0`` turns scaling off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from taso.targets import head_names, in_head, unwrapped

# (group name, its parameters, ρ): one block of parameters whose rate scales with its kept fraction.
Scaled = tuple[str, Sequence[nn.Parameter], float]


def param_groups(
    model: nn.Module,
    lr: float,
    gamma: float = 0.0,
    *,
    scaled: Sequence[Scaled] = (),
    head_lr: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """One optimizer group per ``scaled`` block (rate ``lr·(1/ρ)^γ``), one for the head, one for anything else trainable.

    Each group carries ``name`` and ``rho`` keys so the effective rates can be reported.

    Raises:
        ValueError: ``lr`` is not positive, or nothing in ``model`` trains.
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    groups, seen = [], set()
    for name, params, rho in scaled:
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        seen.update(map(id, params))
        groups.append(
            {"params": params, "lr": lr * (1 / rho) ** gamma, "name": name, "rho": rho, "weight_decay": weight_decay}
        )
    # A PEFT model's head sits under base_model.model; its names still contain the head's (in_head).
    heads = tuple(head_names(unwrapped(model)))
    head, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            (head if in_head(name, heads) else rest).append(p)
    if head:
        groups.append({"params": head, "lr": head_lr or lr, "name": "head", "rho": 1.0, "weight_decay": weight_decay})
    if rest:
        groups.append({"params": rest, "lr": lr, "name": "other", "rho": 1.0, "weight_decay": weight_decay})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def effective_rates(groups: list[dict]) -> dict[str, dict[str, float]]:
    """``{group name: {"rho": ρ, "lr": rate}}`` for reports and run logs."""
    return {g["name"]: {"rho": g["rho"], "lr": g.get("initial_lr", g["lr"])} for g in groups}


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """The rate factor at each step: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor
