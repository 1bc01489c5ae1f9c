"""The contract every way of adapting a model implements, with the parts most methods share.

A method is built from a :class:`MethodConfig` and, for one model, answers:

- ``needs``: what it must be given before training: ``"mask"`` (a core region, which the
  pipeline derives from importance or takes from a source) or ``None``;
- :meth:`Method.region`: the mask it trains, given a core region (the region itself, or a control);
- :meth:`Method.prepare`: change the model (freeze, wrap layers) and return what trains;
- :meth:`Method.param_groups`, :meth:`Method.optimizer`, :meth:`Method.scheduler`: how it steps;
- :meth:`Method.on_backward`, :meth:`Method.on_step`: per-step hooks (gradients present, and
  after the update), where a method that moves its region during training does so;
- :meth:`Method.state_dict`: what a checkpoint needs beyond the trainable tensors, for an exact resume;
- :meth:`Method.export`: a PEFT adapter folder that ``PeftModel.from_pretrained`` loads unchanged;
- :meth:`Method.mask`: the core region it trained, when it has one;
- :meth:`Method.report`, :meth:`Method.history`: what a run records about how it trained.

:func:`taso.train.train` calls only this contract; it never asks which method it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from taso.config import MethodConfig
from taso.lr import Scaled, linear_schedule, param_groups
from taso.masks import Mask
from taso.targets import head_names, in_head, unwrapped

Need = Literal["mask"] | None


class Method:
    """The generic method: trains what ``model`` already leaves trainable, the head at its own rate.

    Subclasses set ``name`` and ``needs`` and override what differs. One instance serves
    one model: :meth:`prepare` may keep state (the mask it was given, a copy of the base).
    """

    name: ClassVar[str] = "generic"
    needs: ClassVar[Need] = None
    # Whether the method ends with a core region (a mask artifact) that others can reuse.
    makes_mask: ClassVar[bool] = False
    # Whether the method finds its own region by a search that trains (IMP's rounds, run where
    # TASO's importance would be: derive-mask), rather than from importance.
    searches_region: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None):
        self.config = config or MethodConfig()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def prepare(self, model: nn.Module, mask: Mask | None = None) -> nn.Module:
        """Make ``model`` ready to train (in place where possible) and return the module to train.

        Raises:
            ValueError: the method needs a mask and got none, or was given one it cannot use.
        """
        self._check_mask(mask)
        return model

    def _check_mask(self, mask: Mask | None) -> None:
        if self.needs == "mask" and mask is None:
            raise ValueError(f"method {self.name!r} trains on a core region: give it a mask")
        if self.needs != "mask" and mask is not None:
            raise ValueError(f"method {self.name!r} takes no mask; it adapts the model without a core region")

    def region(self, mask: Mask) -> Mask:
        """The mask this method trains, given a core region (derived from importance or taken from a source).

        The pipeline's derive-mask stage writes this, so the mask artifact is what the adapter
        trained on. The core region itself by default.
        """
        return mask

    def scaled(self, model: nn.Module) -> list[Scaled]:
        """Blocks whose learning rate scales with their kept fraction ρ (see :mod:`taso.lr`); none by default."""
        return []

    def param_groups(
        self,
        model: nn.Module,
        lr: float,
        *,
        gamma: float = 0.0,
        head_lr: float | None = None,
        weight_decay: float = 0.0,
    ) -> list[dict]:
        """Optimizer groups: the :meth:`scaled` blocks, then the head, then anything else trainable."""
        return param_groups(model, lr, gamma, scaled=self.scaled(model), head_lr=head_lr, weight_decay=weight_decay)

    def optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """AdamW over ``groups``."""
        return torch.optim.AdamW(groups)

    def scheduler(
        self, optimizer: torch.optim.Optimizer, warmup: int, total: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up over ``warmup`` steps, then linear decay to zero at ``total``."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total))

    def extra_gradients(self, model: nn.Module) -> list[torch.Tensor]:
        """Gradients the method keeps outside ``.grad`` (LoSiA's full gradient in a layer's slot), in
        the same order and shapes on every rank: under torchrun they are summed over ranks with the
        parameters' gradients, before :meth:`on_backward` reads them."""
        return []

    def on_backward(self, model: nn.Module, step: int) -> None:
        """Called with the step's gradients in place, before clipping and the update."""

    def on_step(self, model: nn.Module, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Called after the update of step ``step`` (0-based) and the scheduler's step."""

    def state_dict(self) -> dict:
        """Method state a checkpoint must hold beyond the trainable tensors (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""

    def mask(self) -> Mask | None:
        """The core region this method trained, or None if it has none."""
        return None

    def report(self) -> dict:
        """What a run should record about how the method trained (resolved knobs, counts); plain values."""
        return {}

    def history(self) -> list[dict]:
        """Rows of how the region moved during training (a method whose region moves); none by default."""
        return []

    def is_adapter(self, name: str) -> bool:
        """Whether the trainable parameter ``name`` is adapter state (LoRA factors by default)."""
        return "lora_" in name

    def count_trainable(self, model: nn.Module) -> dict[str, int]:
        """Trainable parameters: ``adapter``, ``head``, ``backbone`` (full fine-tuning) and ``total``."""
        heads = tuple(head_names(unwrapped(model)))
        out = {"adapter": 0, "head": 0, "backbone": 0}
        for name, p in model.named_parameters():
            if p.requires_grad:
                part = "adapter" if self.is_adapter(name) else "head" if in_head(name, heads) else "backbone"
                out[part] += p.numel()
        return {**out, "total": sum(out.values())}

    def export(
        self, model: nn.Module, out_dir, *, base_model: str, task_type: str | None, extra: dict | None = None
    ) -> Path:
        """Write the trained adaptation as a PEFT adapter folder, with ``extra`` in ``taso.json`` beside it.

        Args:
            model: the model :meth:`prepare` returned, after training (left unchanged).
            out_dir: the adapter folder, replaced atomically.
            base_model: what ``adapter_config.json`` records as ``base_model_name_or_path``.
            task_type: PEFT task type (``SEQ_CLS``, ``CAUSAL_LM``) or None.
        """
        raise NotImplementedError(f"method {self.name!r} has no export")
