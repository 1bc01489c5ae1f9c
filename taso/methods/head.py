"""Head only: the pretrained backbone stays frozen and only the new task head trains (the lower reference)."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from taso.export import copy_heads, head_modules, peft_model_over, write_adapter
from taso.masks import Mask
from taso.methods.base import Method
from taso.targets import find_targets, head_names


class HeadOnly(Method):
    """Freeze everything but the task head (``classifier`` / ``score``)."""

    name = "head"

    def prepare(self, model: nn.Module, mask: Mask | None = None) -> nn.Module:
        self._check_mask(mask)
        heads = head_names(model)
        if not heads:
            raise ValueError("the model has no task head (classifier / score) to train; choose another train.method")
        model.requires_grad_(False)
        for h in heads:
            getattr(model, h).requires_grad_(True)
        return model

    def export(
        self, model: nn.Module, out_dir, *, base_model: str, task_type: str | None, extra: dict | None = None
    ) -> Path:
        """The head under ``modules_to_save``, beside a rank-1 LoRA whose ``B`` is zero.

        PEFT refuses an adapter that adapts no module, so the folder carries one LoRA on the
        first target module with PEFT's own initialisation (``B = 0``): its update is exactly
        zero, and the loaded model computes what the trained one does.
        """
        from peft import LoraConfig

        first = next(iter(find_targets(model, self.config.targets)))
        config = LoraConfig(
            r=1,
            lora_alpha=1,
            target_modules=[first],
            modules_to_save=head_modules(model, task_type),
            task_type=task_type,
        )
        peft_model = peft_model_over(copy.deepcopy(model), config, base_model=base_model)
        copy_heads(model, peft_model)
        return write_adapter(peft_model, out_dir, extra)
