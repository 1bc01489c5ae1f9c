"""LoSiA: one dense block ``W[R, C]`` per matrix trains, and each layer re-picks its block during training.

The subnet of each target matrix is ``int(p·m)`` rows × ``int(p·n)`` columns, random (seeded) or
taken from a mask at first. Layers take turns (:class:`taso.subnet.Schedule`): while a layer is in
its slot its matrices compute full gradients, whose sensitivity × uncertainty EMAs pick its next
subnet at the slot's end; its Adam moments restart (the step count does not) and its rate re-warms.
The base weights never change: the result is an update ``ΔW`` per matrix, non-zero only on the
blocks visited, exported as exact LoRA factors, and the last subnets are a mask others can reuse.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from taso.block import BlockLinear
from taso.config import LosiaConfig
from taso.export import copy_heads, exact_lora_config, head_modules, peft_model_over, write_adapter
from taso.lr import param_groups
from taso.masks import Mask, ModuleMask, check_fits
from taso.methods.base import Method
from taso.subnet import (
    CANDIDATES,
    Schedule,
    Sensitivity,
    auto_period,
    overlap,
    relocalize,
    rewarm_factor,
    taylor_importance,
)
from taso.targets import find_targets, head_names, layer_index

ADAM_EPS = 1e-6  # LoSiA's Adam epsilon for the blocks
TAYLOR = ("param_mix", "param_first", "param_second")
SCHEDULES = ("asynchronous", "all")
STARTS = ("random", "mask")


def check_config(c: LosiaConfig) -> None:
    """Refuse a LoSiA config that cannot train, naming the knob."""
    if not 0 < c.p <= 1:
        raise ValueError(f"losia.p must be in (0, 1], got {c.p}")
    if c.period is not None and c.period < 1:
        raise ValueError(f"losia.period must be at least 1 step, got {c.period}")
    if c.cycles < 1:
        raise ValueError(f"losia.cycles must be at least 1, got {c.cycles}")
    for knob, value in (("beta1", c.beta1), ("beta2", c.beta2), ("min_lr_ratio", c.min_lr_ratio)):
        if not 0 <= value < 1:
            raise ValueError(f"losia.{knob} must be in [0, 1), got {value}")
    for knob, value, allowed in (
        ("taylor", c.taylor, TAYLOR),
        ("schedule", c.schedule, SCHEDULES),
        ("strategy", c.strategy, ("best", *CANDIDATES)),
        ("start", c.start, STARTS),
    ):
        if value not in allowed:
            raise ValueError(f"losia.{knob}: unknown value {value!r}; choose one of {', '.join(allowed)}")


class Losia(Method):
    """LoSiA on ``config.targets`` with ``config.losia``'s knobs; the head trains densely, as TASO's."""

    name = "losia"
    makes_mask = True

    def __init__(self, config=None):
        super().__init__(config)
        check_config(self.config.losia)
        self._layers: dict[str, BlockLinear] = {}
        self._layer_of: dict[str, int] = {}
        self._ema: dict[str, Sensitivity] = {}
        self._last_move: dict[int, int] = {}
        self._history: list[dict] = []
        self._schedule: Schedule | None = None
        self._next_step = 0

    @property
    def needs(self):
        return "mask" if self.config.losia.start == "mask" else None

    # -- building -------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, mask: Mask | None = None) -> nn.Module:
        self._check_mask(mask)
        c = self.config.losia
        targets = find_targets(model, self.config.targets)
        if mask is not None:
            check_fits(mask, model)
        blocks = {}
        for name, linear in targets.items():
            m, n = linear.weight.shape
            k_r, k_c = int(c.p * m), int(c.p * n)
            if k_r == 0 or k_c == 0:
                raise ValueError(
                    f"losia.p {c.p} leaves {name} ({m}x{n}) a block of {k_r}x{k_c}: raise p to at least "
                    f"{1 / min(m, n):.3g}"
                )
            blocks[name] = (k_r, k_c)
        model.requires_grad_(False)
        g = torch.Generator().manual_seed(self.config.seed)
        indices = sorted({layer_index(n) if layer_index(n) is not None else -1 for n in targets})
        for name, linear in targets.items():
            k_r, k_c = blocks[name]
            m, n = linear.weight.shape
            given = mask.modules.get(name) if mask is not None else None
            rows = _start(given.rows if given is not None else None, m, k_r, g)
            cols = _start(given.cols if given is not None else None, n, k_c, g)
            layer = BlockLinear(linear, rows, cols)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            self._layers[name] = layer
            idx = layer_index(name)
            self._layer_of[name] = indices.index(idx if idx is not None else -1)
        for h in head_names(model):
            getattr(model, h).requires_grad_(True)
        self._mask_meta = {"start": c.start, "start_mask": mask.digest if mask is not None else "none"}
        return model

    def layers(self) -> dict[str, BlockLinear]:
        """The block layers :meth:`prepare` put in, by module name."""
        return dict(self._layers)

    def is_adapter(self, name: str) -> bool:
        return name.endswith(".block")

    def param_groups(self, model, lr, *, gamma=0.0, head_lr=None, weight_decay=0.0):
        """One group per transformer layer (its rate re-warms on its own), then the head's, as every method's."""
        layers = sorted(set(self._layer_of.values()))
        scaled = [
            (f"layer.{i}", [self._layers[n].block for n, at in self._layer_of.items() if at == i], 1.0) for i in layers
        ]
        groups = param_groups(model, lr, 0.0, scaled=scaled, head_lr=head_lr, weight_decay=weight_decay)
        for group in groups[: len(scaled)]:
            group.update(eps=ADAM_EPS, weight_decay=0.0, layer=int(group["name"].split(".")[1]))
        return groups

    def scheduler(self, optimizer, warmup: int, total: int):
        """Per layer: warm-up, then cosine to the floor, re-warmed linearly after each of its moves."""
        c = self.config.losia
        n_layers = len(set(self._layer_of.values()))
        period = c.period or auto_period(total, n_layers, c.cycles)
        if period > total:
            raise ValueError(f"losia.period {period} is longer than the run ({total} steps): no layer would ever move")
        self._schedule = Schedule(period, n_layers, c.schedule)
        self._total, self._warmup = total, warmup

        def factor(layer: int | None):
            return lambda step: rewarm_factor(step, total, warmup, period, self._last_move.get(layer), c.min_lr_ratio)

        self._factor = factor
        self._arm(0)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g.get("layer")) for g in optimizer.param_groups])

    # -- training -------------------------------------------------------------------------------

    def _arm(self, step: int) -> None:
        """Make the layers that record at ``step`` compute their full gradient in its backward."""
        recording = set(self._schedule.recording(step))
        for name, layer in self._layers.items():
            layer.record, layer.full_grad = self._layer_of[name] in recording, None

    def extra_gradients(self, model: nn.Module) -> list[torch.Tensor]:
        # Every recording layer's full gradient, zeros where this rank had no examples to give one.
        out = []
        for layer in self._layers.values():
            if layer.record:
                if layer.full_grad is None:
                    layer.full_grad = torch.zeros_like(layer.weight)
                out.append(layer.full_grad)
        return out

    def on_backward(self, model: nn.Module, step: int) -> None:
        c = self.config.losia
        for name, layer in self._layers.items():
            if layer.full_grad is None:
                continue
            if self._schedule.starts_slot(step) or name not in self._ema:
                self._ema[name] = Sensitivity.zeros(layer.weight.shape, layer.weight.device)
            self._ema[name].update(taylor_importance(layer.weight, layer.full_grad, c.taylor), c.beta1, c.beta2)
            layer.full_grad = None

    def on_step(self, model: nn.Module, step: int, optimizer) -> None:
        moving = set(self._schedule.relocalizing(step))
        if moving:
            self._relocalize(moving, step, optimizer)
        self._next_step = step + 1
        self._arm(step + 1)

    @torch.no_grad()
    def _relocalize(self, moving: set[int], step: int, optimizer) -> None:
        c = self.config.losia
        for name, layer in self._layers.items():
            if self._layer_of[name] not in moving or name not in self._ema:
                continue
            k_r, k_c = layer.block.shape
            rows, cols, chosen, mass = relocalize(self._ema.pop(name).score(), k_r, k_c, c.strategy)
            self._history.append(
                {
                    "step": step,
                    "layer": self._layer_of[name],
                    "module": name,
                    "candidate": chosen,
                    "block_mass": mass,
                    "row_overlap": overlap(layer.rows, rows),
                    "col_overlap": overlap(layer.cols, cols),
                }
            )
            layer.move(rows, cols)
            state = optimizer.state.get(layer.block)
            if state:  # the moments restart; Adam's step count (bias correction) goes on
                state["exp_avg"].zero_()
                state["exp_avg_sq"].zero_()
        for layer_id in moving:
            self._last_move[layer_id] = step
        for group in optimizer.param_groups:  # the scheduler set these before the move: re-warm from now
            if group.get("layer") in moving:
                group["lr"] = group["initial_lr"] * self._factor(group["layer"])(step + 1)

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        layers = {
            name: {"rows": b.rows, "cols": b.cols, "anchor": b.anchor, "weight": b.weight}
            for name, b in self._layers.items()
        }
        ema = {name: {"mean": e.mean, "uncertainty": e.uncertainty} for name, e in self._ema.items()}
        return {
            "layers": layers,
            "ema": ema,
            "last_move": {str(k): v for k, v in self._last_move.items()},
            "history": self._history,
            "next_step": self._next_step,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        for name, saved in state["layers"].items():
            layer = self._layers[name]
            for key in ("rows", "cols", "anchor", "weight"):
                getattr(layer, key).copy_(saved[key])
            layer._synced = None  # the next forward writes anchor + block into the weight, as it would have
        self._ema = {n: Sensitivity(e["mean"].clone(), e["uncertainty"].clone()) for n, e in state["ema"].items()}
        self._last_move = {int(k): v for k, v in state["last_move"].items()}
        self._history = list(state["history"])
        self._next_step = state["next_step"]
        self._arm(self._next_step)

    def report(self) -> dict:
        s = self._schedule
        return {
            "p": self.config.losia.p,
            "period": s.period if s else None,
            "schedule": self.config.losia.schedule,
            "layers": s.layers if s else None,
            "relocalizations": len(self._history),
        }

    def history(self) -> list[dict]:
        """One row per matrix per re-localization: step, layer, module, candidate, block mass, overlaps."""
        return list(self._history)

    def mask(self) -> Mask | None:
        """The last subnet of every matrix, as a core region in the project's mask format."""
        if not self._layers:
            return None
        modules = {
            n: ModuleMask(b.rows.cpu(), b.cols.cpu(), (b.out_features, b.in_features)) for n, b in self._layers.items()
        }
        return Mask(modules, {"rule": "losia", "p": str(self.config.losia.p), **self._mask_meta})

    # -- export ---------------------------------------------------------------------------------

    @torch.no_grad()
    def export(
        self, model: nn.Module, out_dir, *, base_model: str, task_type: str | None, extra: dict | None = None
    ) -> Path:
        """A PEFT LoRA whose ``B·A`` is each matrix's ``ΔW`` exactly: one factor selects the rows (or
        columns) the update touched, the other holds them, at the smaller of the two counts as rank."""
        factors = {name: _exact_factors(layer.delta_weight()) for name, layer in self._layers.items()}
        factors = {n: f for n, f in factors.items() if f is not None}
        if not factors:
            raise ValueError("LoSiA's update is zero in every matrix: nothing trained (check train.lr and the steps)")
        ranks = {n: a.shape[0] for n, (a, _) in factors.items()}
        config = exact_lora_config(ranks, modules_to_save=head_modules(model, task_type), task_type=task_type)
        clean = copy.deepcopy(model)
        for name in self._layers:
            parent, _, child = name.rpartition(".")
            holder = clean.get_submodule(parent) if parent else clean
            setattr(holder, child, getattr(holder, child).base)
        peft_model = peft_model_over(clean, config, base_model=base_model)
        inner = peft_model.base_model.model
        for name, (a, b) in factors.items():
            target = inner.get_submodule(name)
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)
        copy_heads(model, peft_model)
        return write_adapter(peft_model, out_dir, extra)


def _start(given: torch.Tensor | None, size: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``k`` sorted indices of ``size``: a seeded random draw, or ``given``'s (a seeded subset of them
    if there are more than ``k``, topped up at random if fewer)."""
    order = torch.randperm(size, generator=g)
    if given is None:
        return torch.sort(order[:k]).values
    given = given.to(torch.long)
    picked = given[torch.randperm(len(given), generator=g)[:k]]
    rest = order[~torch.isin(order, picked)][: k - len(picked)]
    return torch.sort(torch.cat([picked, rest])).values


def _exact_factors(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, B)`` with ``B @ A == delta`` exactly: a 0/1 selection of the touched rows (or columns) and
    the update on them; None for a zero update."""
    rows = delta.abs().sum(1).nonzero().flatten()
    cols = delta.abs().sum(0).nonzero().flatten()
    if len(rows) == 0:
        return None
    if len(rows) <= len(cols):
        b = torch.zeros(delta.shape[0], len(rows), dtype=delta.dtype, device=delta.device)
        b[rows, torch.arange(len(rows), device=delta.device)] = 1.0
        return delta[rows].clone(), b
    a = torch.zeros(len(cols), delta.shape[1], dtype=delta.dtype, device=delta.device)
    a[torch.arange(len(cols), device=delta.device), cols] = 1.0
    return a, delta[:, cols].clone()
