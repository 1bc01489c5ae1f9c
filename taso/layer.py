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
        if self.merged:
            return self.base(x)
        bias = self.base.bias
        frozen = not self.base.weight.requires_grad and (bias is None or not bias.requires_grad)
        fusable = frozen and isinstance(self.dropout, nn.Identity)
        if fusable and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
            block = block_gradient_pays(self.base.weight.shape, len(self.rows), len(self.cols), self.r)
            return _MaskedLora.apply(
                x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.rows, self.cols, self.scaling, block
            )
        y = self.base(x)
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


# Up to this many times the rank-r passes' width, the factor gradients go through the kept block's
# weight gradient. The sweep in docs/performance.md (benchmarks/speed.py) puts the two routes'
# crossover between 2x and 8x by shape, and the block route a few percent slower at most on a layer up to
# 8x: a price worth paying for saving only x[:, cols] (the rank passes keep x and x·Aᵀ).
BLOCK_GRADIENT_LIMIT = 8


def block_gradient_pays(shape: tuple[int, int], n_rows: int, n_cols: int, r: int) -> bool:
    """Whether the factor gradients are cheaper through the kept block's weight gradient ``gᵀx[R, C]``
    (``|rows|·|cols|`` wide) than through four rank-``r`` passes over the activations (``r·(d_in + d_out)``)."""
    d_out, d_in = shape
    return n_rows * n_cols <= BLOCK_GRADIENT_LIMIT * r * (d_in + d_out)


class _MaskedLora(torch.autograd.Function):
    """Frozen linear plus masked LoRA in one autograd node, so training costs about what the frozen backbone costs.

    The factors are scattered into zero-padded ``A (r×d_in)`` and ``Bᵀ (r×d_out)`` and the
    update is folded into the weight for the one matmul the frozen layer does anyway, in the
    forward and again for the input gradient. The factor gradients then take one of two routes,
    both exact: for a small kept block, its weight gradient ``M = g[:, R]ᵀ·x[:, C]`` and
    ``∂A = s·Bᵀ·M``, ``∂B = s·M·Aᵀ`` (a cost that follows the region's size); for a large one,
    four rank-``r`` passes over the activations (``h = x·Aᵀ``, ``g·B`` and the two factor
    gradients), whose cost follows the layer's width instead. Nothing outside the mask is ever
    a parameter.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, rows, cols, scaling, block):
        x2 = x.reshape(-1, x.shape[-1])
        y = F.linear(x2, merged_weight(weight, A, B, rows, cols, scaling), bias)
        # The block route saves only the kept input columns, gathered while x is still in cache; the
        # rank passes need all of x. The merged weight is recomputed in backward, not saved: it is
        # as large as the layer.
        kept = take_columns(x2, cols) if block else x2
        h = None if block else x2 @ _padded(A, B, rows, cols, weight.shape)[0].t()
        ctx.save_for_backward(kept, weight, A, B, rows, cols, h)
        ctx.scaling, ctx.block, ctx.x_shape = scaling, block, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        kept, weight, A, B, rows, cols, h = ctx.saved_tensors
        s = ctx.scaling
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = input_gradient(ctx, grad_y)
        if ctx.block:
            block_grad = take_columns(g, rows).t() @ kept
            grad_A, grad_B = (B.t() @ block_grad).mul_(s), (block_grad @ A.t()).mul_(s)
        else:
            # The rank-r products are written in the operand order CPU BLAS runs fastest: g·B as
            # F.linear with B stored r×d_out, and B's gradient as (hᵀg)ᵀ. At rank 4 the textbook
            # orders g @ B and gᵀ @ h were markedly slower.
            grad_h = F.linear(g, _padded(A, B, rows, cols, weight.shape)[1]).mul_(s)
            grad_A = (grad_h.t() @ kept).index_select(1, cols)
            grad_B = (h.t() @ g).index_select(1, rows).t().mul_(s)
        return grad_x, None, None, grad_A, grad_B, None, None, None, None


def input_gradient(ctx, grad_y: torch.Tensor) -> torch.Tensor | None:
    """``_MaskedLora``'s input gradient, through the merged weight ``W + s·B·A`` (None where autograd
    does not ask for it, as below the lowest adapted layer)."""
    if not ctx.needs_input_grad[0]:
        return None
    _kept, weight, A, B, rows, cols, _h = ctx.saved_tensors
    merged = merged_weight(weight, A, B, rows, cols, ctx.scaling)
    return (grad_y.reshape(-1, grad_y.shape[-1]) @ merged).view(ctx.x_shape)


def merged_weight(weight, A, B, rows, cols, scaling) -> torch.Tensor:
    """``W + s·B·A`` with the kept factors placed on their rows and columns: one rank-r ``addmm``."""
    A_pad, Bt_pad = _padded(A, B, rows, cols, weight.shape)
    return torch.addmm(weight, Bt_pad.t(), A_pad, alpha=scaling)


def take_columns(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[..., index]``, as a gather over the broadcast index: on CPU faster than ``index_select``
    on the last dimension, which the factor gradients pay every step."""
    return torch.gather(t, -1, index.expand(*t.shape[:-1], len(index)))


def _padded(A, B, rows, cols, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """``A (r×|cols|)`` and ``B (|rows|×r)`` placed into zero ``r×d_in`` and ``r×d_out`` matrices (B transposed)."""
    d_out, d_in = shape
    r = A.shape[0]
    return A.new_zeros(r, d_in).index_copy_(1, cols, A), B.new_zeros(r, d_out).index_copy_(1, rows, B.t())
