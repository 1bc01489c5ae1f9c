"""IMP's final training: TASO's masked LoRA on the region the pruning rounds found, rewound to θ0.

The rounds themselves (:func:`taso.imp.search`) run before training, where TASO scores importance
(the pipeline's derive-mask stage); each round and the final run start from the same θ0, the
full-width initial ``A`` of every module restricted to the columns kept, as a lottery ticket does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from taso.injection import masked_layers
from taso.masks import Mask
from taso.methods.taso import Taso


class Imp(Taso):
    """Masked LoRA of rank ``config.rank`` on IMP's mask, from θ0 restricted to what it keeps."""

    name = "imp"
    searches_region = True

    def prepare(self, model: nn.Module, mask: Mask | None = None) -> nn.Module:
        model = super().prepare(model, mask)
        layers = masked_layers(model)
        targets = [n for n, _ in model.named_modules() if n in mask.modules]  # model order, empty ones too
        theta0 = initial_factors(model, targets, self.config.rank, self.config.seed)
        with torch.no_grad():
            for name, layer in layers.items():
                layer.lora_A.copy_(theta0[name][:, layer.cols])
        return model


def initial_factors(model: nn.Module, names: Sequence[str], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """θ0: each module's full-width LoRA ``A`` (``rank × d_in``, PEFT's Kaiming-uniform init), drawn in
    the order of ``names`` from ``seed``; a round trains ``A[:, kept columns]`` of it (B starts at
    zero). Pass every target, emptied ones too, so each module's draw never depends on the mask."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        d_in = model.get_submodule(n).in_features
        bound = 1 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on a (rank, d_in) matrix
        out[n] = (torch.rand(rank, d_in, generator=g) * 2 - 1) * bound
    return out
