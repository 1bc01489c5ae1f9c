"""Full fine-tuning: every parameter trains (the upper reference), exported exactly as a PEFT LoRA.

PEFT has no dense-update adapter, so the export writes each linear layer's update
``ΔW = W − W₀`` as exact LoRA factors of full rank (an SVD, ``B = U·S``, ``A = Vᵀ``; the
bias change as LoRA's bias), and every other module that holds parameters (embeddings,
norms, the head) under ``modules_to_save``. The folder is about 1.5× the model's size.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from taso.export import exact_lora_config, head_modules, peft_model_over, write_adapter
from taso.masks import Mask
from taso.methods.base import Method
from taso.targets import head_names


class FullFinetune(Method):
    """Every parameter of the model trains; :meth:`prepare` keeps a copy of the pretrained weights for the export."""

    name = "full"

    def prepare(self, model: nn.Module, mask: Mask | None = None) -> nn.Module:
        self._check_mask(mask)
        self._base = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model.requires_grad_(True)

    def is_adapter(self, name: str) -> bool:
        return False

    @torch.no_grad()
    def export(
        self, model: nn.Module, out_dir, *, base_model: str, task_type: str | None, extra: dict | None = None
    ) -> Path:
        params = dict(model.named_parameters())
        heads = set(head_names(model))
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[0] not in heads}
        tied = [n for n in linears if f"{n}.weight" not in params]
        if tied:
            raise ValueError(
                f"full fine-tuning cannot be exported exactly for a model with tied weights ({tied[0]}); "
                "choose another train.method"
            )
        rest = [
            n
            for n, m in model.named_modules()
            if n
            and n not in linears
            and n.split(".")[0] not in heads
            and next(m.parameters(recurse=False), None) is not None
        ]
        ranks = {n: min(m.weight.shape) for n, m in linears.items()}
        config = exact_lora_config(
            ranks,
            lora_bias=any(m.bias is not None for m in linears.values()),
            modules_to_save=rest + (head_modules(model, task_type) or []),
            task_type=task_type,
        )
        pristine = copy.deepcopy(model)
        for n, p in pristine.named_parameters():
            p.copy_(self._base[n])
        peft_model = peft_model_over(pristine, config, base_model=base_model)
        inner = peft_model.base_model.model
        for n, m in linears.items():
            delta = (m.weight - self._base[f"{n}.weight"]).double()
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            target = inner.get_submodule(n)
            target.lora_A["default"].weight.copy_(Vh)
            target.lora_B["default"].weight.copy_(U * S)
            if m.bias is not None:
                target.lora_B["default"].bias.copy_(m.bias - self._base[f"{n}.bias"])
        for n in rest + sorted(heads):
            inner.get_submodule(n).modules_to_save["default"].load_state_dict(model.get_submodule(n).state_dict())
        with warnings.catch_warnings():
            # PEFT takes LoRA's 1-D bias for an unsharded weight (a DeepSpeed/FSDP hint); it is the bias.
            warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
            return write_adapter(peft_model, out_dir, extra)
