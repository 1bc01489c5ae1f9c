"""LoSiA's layer: a frozen linear whose one dense block ``W[R, C]`` trains, with LoSiA-Pro's backward.

The base ``nn.Linear`` is never written to. The layer keeps its own working weight, ``W`` plus
every update so far (earlier blocks folded in), and the trainable block holds the update of the
current subnet over an ``anchor`` (the working weight's block when the subnet was chosen). The
forward is one matmul with the working weight, as a dense layer's; the backward computes the
input gradient and only the ``k_r × k_c`` block of the weight gradient, from the ``k_c`` input
columns the forward saved (LoSiA-Pro), except while the layer records importance: then it
computes and keeps the full weight gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from taso.layer import take_columns


class BlockLinear(nn.Module):
    """Wraps a frozen ``nn.Linear``; trains ``block``, the update of rows ``rows`` × columns ``cols``."""

    # The tensors that make up the adapter's state while training.
    adapter_params = ("block",)

    def __init__(self, base: nn.Linear, rows: torch.Tensor, cols: torch.Tensor):
        super().__init__()
        if len(rows) == 0 or len(cols) == 0:
            raise ValueError(f"a LoSiA block needs rows and columns; got {len(rows)} x {len(cols)}")
        self.base = base
        w = base.weight.detach()
        # The working weight is state, not a parameter: checkpoints hold it through the method.
        self.register_buffer("weight", w.clone(), persistent=False)
        self.register_buffer("rows", rows.to(w.device, torch.long), persistent=False)
        self.register_buffer("cols", cols.to(w.device, torch.long), persistent=False)
        self.register_buffer("anchor", w[self.rows.unsqueeze(1), self.cols].clone(), persistent=False)
        self.block = nn.Parameter(torch.zeros(len(rows), len(cols), dtype=w.dtype, device=w.device))
        self.record = False  # the next backward computes the full weight gradient into full_grad
        self.full_grad: torch.Tensor | None = None
        self._synced = self.block._version

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @torch.no_grad()
    def sync(self) -> None:
        """Write ``anchor + block`` into the working weight, if the block changed since the last write.

        Lazily, at the next forward: a model that runs a layer twice per step (a pair's two texts)
        must see one unchanged weight until its backward.
        """
        if self.block._version != self._synced:
            self.weight[self.rows.unsqueeze(1), self.cols] = self.anchor + self.block
            self._synced = self.block._version

    @torch.no_grad()
    def move(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Fold the current block into the working weight and start a new zero block on ``rows`` × ``cols``."""
        self.sync()
        if (len(rows), len(cols)) != tuple(self.block.shape):
            raise ValueError(f"a new subnet must keep the block's shape {tuple(self.block.shape)}")
        self.rows.copy_(rows)
        self.cols.copy_(cols)
        self.anchor.copy_(self.weight[self.rows.unsqueeze(1), self.cols])
        self.block.zero_()
        self._synced = self.block._version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sync()
        if not (torch.is_grad_enabled() and self.block.requires_grad):
            return F.linear(x, self.weight.to(x.dtype), None if self.base.bias is None else self.base.bias.to(x.dtype))
        return _BlockGrad.apply(x, self.weight, self.base.bias, self.block, self.rows, self.cols, self)

    def delta_weight(self) -> torch.Tensor:
        """The whole update ``ΔW`` (working weight minus base): exactly zero outside the blocks visited."""
        self.sync()
        return self.weight - self.base.weight

    def extra_repr(self) -> str:
        return f"rows={len(self.rows)}/{self.out_features}, cols={len(self.cols)}/{self.in_features}"


class _BlockGrad(torch.autograd.Function):
    """``y = x·Wᵀ + b`` whose backward gives ``dX = dY·W`` and ``dW[R, C] = dY[..., R]ᵀ·x[..., C]`` only.

    The forward saves ``x[..., C]`` (a fraction p of the input) unless the layer records; then it
    saves ``x`` whole and the backward adds the full ``dW`` to ``layer.full_grad``. Runs in the
    weight's dtype, under autocast too: an fp32 block's update must not round away in bf16.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, block, rows, cols, layer):
        ctx.layer, ctx.full, ctx.dtype = layer, layer.record, x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(weight.dtype)
            ctx.save_for_backward(x if ctx.full else take_columns(x, cols), weight, rows, cols)
            return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        saved, weight, rows, cols = ctx.saved_tensors
        g = grad_y.to(weight.dtype).reshape(-1, grad_y.shape[-1])
        xs = saved.reshape(-1, saved.shape[-1])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).view(*grad_y.shape[:-1], weight.shape[1]).to(ctx.dtype)
        if ctx.full:
            full = g.t() @ xs
            layer = ctx.layer
            layer.full_grad = full if layer.full_grad is None else layer.full_grad + full
            grad_block = full.index_select(0, rows).index_select(1, cols)
        else:
            grad_block = take_columns(g, rows).t() @ xs
        return grad_x, None, None, grad_block, None, None, None
