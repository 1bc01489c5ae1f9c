"""Baselines in the same API as TASO, so benchmarks compare like with like.

Each returns the model ready for :func:`taso.train.train`: plain LoRA through the real
``peft`` library, head-only training, and (in :func:`taso.masks.random_like`) a random
mask with TASO's per-module counts.
"""

from __future__ import annotations

from torch import nn

from taso.targets import TargetSpec, find_targets, head_names


def peft_lora(
    model: nn.Module,
    *,
    r: int = 1,
    alpha: float = 2.0,
    dropout: float = 0.0,
    targets: TargetSpec = "all-linear",
    seed: int = 0,
) -> nn.Module:
    """Dense LoRA of rank ``r`` on the same target modules, through ``peft``; the head trains too."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = sorted(find_targets(model, targets))
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, modules_to_save=head_names(model) or None
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def head_only(model: nn.Module) -> nn.Module:
    """Freeze everything but the task head."""
    heads = head_names(model)
    if not heads:
        raise ValueError("the model has no task head (classifier / score) to train")
    model.requires_grad_(False)
    for h in heads:
        getattr(model, h).requires_grad_(True)
    return model


def full_finetune(model: nn.Module) -> nn.Module:
    """Every parameter trains (the upper reference)."""
    return model.requires_grad_(True)
