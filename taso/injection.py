"""Putting masked LoRA layers into a model and taking them out (merged or not)."""

from __future__ import annotations

import torch
from torch import nn

from taso.layer import MaskedLoraLinear
from taso.masks import Mask, check_fits
from taso.targets import head_names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def inject(
    model: nn.Module,
    mask: Mask,
    *,
    r: int = 1,
    alpha: float = 2.0,
    dropout: float = 0.0,
    seed: int = 0,
    train_head: bool = True,
) -> nn.Module:
    """Freeze ``model`` and wrap every non-empty masked module in a :class:`MaskedLoraLinear`.

    The task head (``classifier`` / ``score``) stays trainable when ``train_head``. A's
    initialisation is seeded so that the same mask and seed give the same adapter.

    Returns:
        ``model``, changed in place.

    Raises:
        ArtifactError: the mask does not fit the model.
        ValueError: a module of the mask already holds a masked LoRA layer.
    """
    held = [n for n in masked_layers(model) if n in mask.modules]
    if held:
        raise ValueError(f"{held[0]} already holds a masked LoRA layer; call remove() first")
    check_fits(mask, model)
    model.requires_grad_(False)
    g = torch.random.fork_rng()
    # Model order, not mask order: a loaded mask lists its modules sorted by name, and the
    # same mask must draw the same A's whether it was derived in memory or read from a file.
    order = [n for n, _ in model.named_modules() if n in mask.modules]
    with g:
        torch.manual_seed(seed)
        for name in order:
            m = mask.modules[name]
            if m.empty:
                continue
            base = model.get_submodule(name)
            if isinstance(base, MaskedLoraLinear):
                raise ValueError(f"{name} already holds a masked LoRA layer; call remove() first")
            _set_module(model, name, MaskedLoraLinear(base, m.rows, m.cols, r=r, alpha=alpha, dropout=dropout))
    if train_head:
        for h in head_names(model):
            getattr(model, h).requires_grad_(True)
    return model


def masked_layers(model: nn.Module) -> dict[str, MaskedLoraLinear]:
    """Every masked LoRA layer in ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLoraLinear)}


def remove(model: nn.Module, *, merge: bool = False) -> nn.Module:
    """Put the base linears back; with ``merge`` the update is first folded into their weights."""
    for name, layer in masked_layers(model).items():
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        _set_module(model, name, layer.base)
    return model


def merge(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference without the extra matmuls)."""
    for layer in masked_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo :func:`merge`."""
    for layer in masked_layers(model).values():
        layer.unmerge()
