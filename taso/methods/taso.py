"""TASO: a LoRA whose update lives on the task's core region (kept rows × kept columns), and its random-mask control.

The region is given (derived from importance before training, or taken from another task);
:class:`~taso.layer.MaskedLoraLinear` holds only the kept sub-blocks of the factors, each
module's rate scales with its kept fraction, and the export is a standard PEFT LoRA with
exact zeros outside the mask.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from taso.export import copy_heads, head_modules, peft_model_over, write_adapter
from taso.injection import inject, masked_layers, remove
from taso.lr import Scaled
from taso.masks import Mask, random_like
from taso.methods.base import Method

# The random mask draws from its own stream, apart from the adapter's initialisation at ``seed``.
RANDOM_MASK_SEED_OFFSET = 1000


class Taso(Method):
    """Masked LoRA of rank ``config.rank`` on the given mask; the head trains too."""

    name = "taso"
    needs = "mask"
    makes_mask = True

    def prepare(self, model: nn.Module, mask: Mask | None = None) -> nn.Module:
        self._check_mask(mask)
        self._mask = mask
        c = self.config
        return inject(model, self._mask, r=c.rank, alpha=c.alpha, dropout=c.dropout, seed=c.seed)

    def mask(self) -> Mask | None:
        return getattr(self, "_mask", None)

    def scaled(self, model: nn.Module) -> list[Scaled]:
        return [
            (name, [layer.lora_A, layer.lora_B], _kept_fraction(layer)) for name, layer in masked_layers(model).items()
        ]

    def export(
        self, model: nn.Module, out_dir, *, base_model: str, task_type: str | None, extra: dict | None = None
    ) -> Path:
        """A PEFT LoRA with dense ``A``/``B`` that are zero outside the mask, the task head under ``modules_to_save``."""
        from peft import LoraConfig

        layers = masked_layers(model)
        if not layers:
            raise ValueError("the model holds no masked LoRA layer to export")
        first = next(iter(layers.values()))
        clean = remove(copy.deepcopy(model))
        config = LoraConfig(
            r=first.r,
            lora_alpha=first.alpha,
            lora_dropout=float(getattr(first.dropout, "p", 0.0)),
            target_modules=sorted(layers),
            modules_to_save=head_modules(model, task_type),
            task_type=task_type,
        )
        peft_model = peft_model_over(clean, config, base_model=base_model)
        inner = peft_model.base_model.model
        with torch.no_grad():
            for name, layer in layers.items():
                A, B = layer.dense_lora()
                target = inner.get_submodule(name)
                target.lora_A["default"].weight.copy_(A)
                target.lora_B["default"].weight.copy_(B)
        copy_heads(model, peft_model)
        return write_adapter(peft_model, out_dir, extra)


class RandomMask(Taso):
    """TASO's masked LoRA on a random mask with a core region's per-module row and column counts.

    The control for "does the region matter?": same parameter count, same training, no importance.
    :meth:`region` draws the random mask; :meth:`prepare` trains on the mask it is given.
    """

    name = "random"

    def region(self, mask: Mask) -> Mask:
        return random_like(mask, seed=RANDOM_MASK_SEED_OFFSET + self.config.seed)


def _kept_fraction(layer) -> float:
    return (len(layer.rows) + len(layer.cols)) / (layer.out_features + layer.in_features)
