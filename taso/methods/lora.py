"""Dense LoRA through the real ``peft`` library: rank ``r`` on every target module, the head trains too.

The reference TASO is measured against; its export is PEFT's own ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from taso.export import write_adapter
from taso.masks import Mask
from taso.methods.base import Method
from taso.targets import find_targets, head_names


class Lora(Method):
    """PEFT LoRA of rank ``config.rank`` and scale ``config.alpha`` on ``config.targets``."""

    name = "lora"

    def prepare(self, model: nn.Module, mask: Mask | None = None) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        self._check_mask(mask)
        c = self.config
        config = LoraConfig(
            r=c.rank,
            lora_alpha=c.alpha,
            lora_dropout=c.dropout,
            target_modules=sorted(find_targets(model, c.targets)),
            modules_to_save=head_names(model) or None,
        )
        with torch.random.fork_rng():  # LoRA's A is drawn from the method's seed, not the caller's stream
            torch.manual_seed(c.seed)
            return get_peft_model(model, config)

    def export(
        self, model: nn.Module, out_dir, *, base_model: str, task_type: str | None, extra: dict | None = None
    ) -> Path:
        config = model.peft_config["default"]
        recorded = config.base_model_name_or_path
        config.base_model_name_or_path = base_model  # name the base the way the caller wants it found
        try:
            return write_adapter(model, out_dir, extra)
        finally:
            config.base_model_name_or_path = recorded
