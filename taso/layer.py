"""The masked LoRA layer: a LoRA whose update lives only on kept rows × kept columns.

``ΔW = (α/r)·B·A`` with ``B`` zero outside the kept rows and ``A`` zero outside the kept
columns. Only the kept sub-blocks ``B_sub (|rows|×r)`` and ``A_sub (r×|cols|)`` exist as
parameters, so the entries outside the mask are zero by construction, not by projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLoraLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` and adds ``(α/r)·B_sub·A_sub·x[..., cols]`` to the kept output rows."""

    # The tensors that make up the adapter's state; save, load and merge code uses this list.
    adapter_params = ("lora_A", "lora_B")

    def __init__(
        self,
        base: nn.Linear,
        rows: torch.Tensor,
        cols: torch.Tensor,
        r: int = 1,
        alpha: float = 2.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.base = base
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        self.register_buffer("rows", rows.to(torch.long), persistent=False)
        self.register_buffer("cols", cols.to(torch.long), persistent=False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, len(cols), dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(len(rows), r, dtype=w.dtype, device=w.device))
        # Same init as PEFT's LoRA on the kept block: A Kaiming-uniform, B zero, so ΔW starts at 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = F.linear(self.dropout(x).index_select(-1, self.cols), self.lora_A)
        delta = F.linear(h, self.lora_B) * self.scaling
        return y.index_add(-1, self.rows, delta.to(y.dtype))

    def delta_block(self) -> torch.Tensor:
        """The update on the kept block, ``(α/r)·B_sub·A_sub`` of shape ``(|rows|, |cols|)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The full-size update ``ΔW``, exactly zero outside kept rows × kept columns."""
        dw = torch.zeros_like(self.base.weight)
        dw[self.rows.unsqueeze(1), self.cols] = self.delta_block().to(dw.dtype)
        return dw

    def dense_lora(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-size PEFT-style factors ``A (r×d_in)``, ``B (d_out×r)`` with zeros outside the mask."""
        A = self.lora_A.new_zeros(self.r, self.in_features)
        B = self.lora_B.new_zeros(self.out_features, self.r)
        A[:, self.cols] = self.lora_A.detach()
        B[self.rows] = self.lora_B.detach()
        return A, B

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into the base weight; forward then skips the adapter path."""
        if not self.merged:
            self.base.weight[self.rows.unsqueeze(1), self.cols] += self.delta_block().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from the base weight again."""
        if self.merged:
            self.base.weight[self.rows.unsqueeze(1), self.cols] -= self.delta_block().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rows={len(self.rows)}/{self.out_features}, cols={len(self.cols)}/{self.in_features}, r={self.r}, alpha={self.alpha}"
