"""First-order importance of every target weight: ``I(W) = Σ_batches |W ⊙ ∂L/∂W|``.

(Or, as an option, LoSiA's sensitivity × uncertainty score ``S = Ī ⊙ Ū`` over the same batches,
taken once before training: ../shared/METHODS.md §1.)

Scoring follows the shape of PEFT's LoRA-GA calibration: gradients are switched on only for
the target weights, the model's state is restored afterwards, and each weight's gradient
is folded into running fp32 sums by a post-accumulate-grad hook and freed at once, so at
most one layer's weight gradient exists at any moment.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from taso import distributed
from taso.config import LosiaConfig
from taso.io import ArtifactError, digest_tensors, load_safetensors, save_safetensors
from taso.names import STATISTICS, Statistic
from taso.subnet import Sensitivity, Taylor, taylor_importance
from taso.targets import TargetSpec, attention_heads, find_targets, head_names

LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]


def default_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's own training loss (transformers models return it when given labels).

    Token labels (a causal LM's instruction batch) take :func:`taso.causal_lm.answer_loss`: the same
    loss, with the LM head run over the answer positions only.
    """
    if batch["labels"].dim() == 2:
        from taso.causal_lm import answer_loss

        return answer_loss(model, batch)
    return model(**batch).loss


@dataclass
class Importance:
    """Importance marginals per target module, and optionally the full maps.

    ``rows[name]`` has one entry per output feature (the sum of I over that row),
    ``cols[name]`` one per input feature; ``full[name]`` is I itself when kept.
    """

    rows: dict[str, torch.Tensor]
    cols: dict[str, torch.Tensor]
    full: dict[str, torch.Tensor] | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (self.rows[n].numel(), self.cols[n].numel()) for n in self.rows}

    @property
    def digest(self) -> str:
        return digest_tensors(self._tensors())

    @property
    def heads(self) -> dict[str, int]:
        """The head width of each module whose rows are attention heads, as the scorer recorded it."""
        return json.loads(self.meta.get("heads", "{}"))

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{n}.row": r for n, r in self.rows.items()} | {f"{n}.col": c for n, c in self.cols.items()}
        return out | {f"{n}.full": f for n, f in (self.full or {}).items()}

    def save(self, path) -> str:
        """Write ``importance.safetensors`` atomically; return the content digest stored in it."""
        digest = self.digest
        save_safetensors(path, self._tensors(), {**self.meta, "digest": digest})
        return digest

    @classmethod
    def load(cls, path) -> Importance:
        """Read an importance file, refusing it when its content does not match its digest."""
        tensors, meta = load_safetensors(path)
        parts: dict[str, dict[str, torch.Tensor]] = {"row": {}, "col": {}, "full": {}}
        for key, t in tensors.items():
            name, _, kind = key.rpartition(".")
            if kind not in parts or not name:  # e.g. a mask file (``<name>.rows``) passed by mistake
                raise ArtifactError(
                    f"{path}: not a taso importance map (tensor {key!r} is not <module>.row/.col/.full); "
                    "pass the score stage's importance.safetensors"
                )
            parts[kind][name] = t
        rows, cols, full = parts["row"], parts["col"], parts["full"]
        if set(rows) != set(cols) or not rows:
            raise ArtifactError(
                f"{path}: incomplete importance map (modules with rows but no columns, or none at all); "
                "re-create it with the score stage"
            )
        imp = cls(rows, cols, full or None, {k: v for k, v in meta.items() if k != "digest"})
        if meta.get("digest") and meta["digest"] != imp.digest:
            raise ArtifactError(f"{path}: content does not match its recorded digest; the file was altered")
        return imp


def score_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: TargetSpec = "all-linear",
    *,
    loss_fn: LossFn = default_loss,
    keep_full: bool | Collection[str] = False,
    statistic: Statistic = "taylor",
    taylor: Taylor = LosiaConfig.taylor,
    betas: tuple[float, float] = (LosiaConfig.beta1, LosiaConfig.beta2),
) -> Importance:
    """Accumulate ``|W ⊙ ∂L/∂W|`` over ``batches`` for every target weight, in fp32.

    The model runs in eval mode (no dropout, so scores are deterministic); its
    ``requires_grad`` flags and train/eval mode are restored on return, even on error.

    Args:
        model: the frozen pretrained model with its task head.
        batches: calibration batches, each a mapping accepted by ``loss_fn``.
        targets: which linear layers to score (see ``taso.targets``).
        loss_fn: computes the scalar task loss of one batch.
        keep_full: also return full importance maps (as large as the weights): ``True`` for
            every module, or a collection of module names (e.g. one matrix for a heatmap).
        statistic: ``taylor``, the sum above; or ``sensitivity``, LoSiA's ``Ī ⊙ Ū``: EMAs (``betas``)
            of the per-batch ``taylor`` term and of its deviation, in batch order, as one LoSiA
            slot computes them (LoSiA's defaults), here once before training. It holds two fp32 copies of every
            target weight while scoring, and cannot be split over torchrun ranks (an EMA is not a sum).

    Returns:
        Row and column marginals per target module (and full maps when asked), with the heads of
        the q/k/v projections in ``meta["heads"]``. Under torchrun, each rank scores every
        ``world``-th batch and every rank returns the sums over all ranks.

    Raises:
        FloatingPointError: a batch's loss is NaN or infinite.
        ValueError: an unknown statistic, or ``sensitivity`` under torchrun.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown importance statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
    if statistic == "sensitivity" and distributed.active():
        raise ValueError(
            "the sensitivity statistic is a running average over batches in order, not a sum, so it cannot "
            "be split over ranks: score in one process (distributed.nproc 1, or without torchrun), or use "
            "score.statistic taylor"
        )
    modules = find_targets(model, targets)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    rows = {n: torch.zeros(m.out_features) for n, m in modules.items()}
    cols = {n: torch.zeros(m.in_features) for n, m in modules.items()}
    keep = set(modules) if keep_full is True else set(keep_full or ())
    full = {n: torch.zeros(m.out_features, m.in_features) for n, m in modules.items() if n in keep} or None

    ema = {n: Sensitivity.zeros(m.weight.shape) for n, m in modules.items()} if statistic == "sensitivity" else {}

    def fold(name: str) -> Callable[[torch.Tensor], None]:
        def hook(weight: torch.Tensor) -> None:
            if ema:
                ema[name].update(taylor_importance(weight.detach(), weight.grad, taylor).cpu(), *betas)
            else:
                score = (weight.detach().float() * weight.grad.float()).abs_()
                rows[name] += score.sum(1).cpu()
                cols[name] += score.sum(0).cpu()
                if full is not None and name in full:
                    full[name] += score.cpu()
            weight.grad = None  # free it now: the next layer's gradient is about to exist

        return hook

    if distributed.active():  # each rank scores its share of the batches; the sums are added below
        batches = distributed.share(list(batches))
    hooks = []
    n_batches = 0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for name, m in modules.items():
            m.weight.requires_grad_(True)
            hooks.append(m.weight.register_post_accumulate_grad_hook(fold(name)))
        for batch in batches:
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"calibration loss is {loss.item()} on batch {n_batches}")
            loss.backward()
            n_batches += 1
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    for n, e in ema.items():
        score = e.score()
        rows[n], cols[n] = score.sum(1), score.sum(0)
        if full is not None and n in full:
            full[n] = score
    count = torch.tensor([float(n_batches)])
    distributed.sum_([*rows.values(), *cols.values(), *(full or {}).values(), count])
    n_batches = int(count.item())
    if n_batches == 0:
        raise ValueError("no calibration batches: the calibration set is empty")
    meta = {"n_batches": str(n_batches), "targets": str(targets), "statistic": statistic}
    if statistic == "sensitivity":
        meta |= {"taylor": taylor, "betas": json.dumps(list(betas))}
    heads = attention_heads(model, list(modules))
    return Importance(rows, cols, full, meta | ({"heads": json.dumps(heads)} if heads else {}))


def warm_up_head(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    steps: int,
    *,
    lr: float = 1e-3,
    loss_fn: LossFn = default_loss,
    seed: int = 0,
) -> int:
    """Train only the task head for ``steps`` batches, so scoring sees a head that is not random.

    The model trains in train mode, so dropout draws random numbers: they come from ``seed``,
    in a stream of their own (the caller's RNG is left as it was), so the same seed warms the
    head up the same way in any process.

    Returns the number of steps taken (fewer when ``batches`` runs out). The head keeps
    its trained weights; every other parameter's ``requires_grad`` is restored.
    """
    heads = [getattr(model, n) for n in head_names(model)]
    if steps <= 0 or not heads:
        return 0
    flags = {p: p.requires_grad for p in model.parameters()}
    params = [p for h in heads for p in h.parameters()]
    was_training = model.training
    taken = 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.AdamW(params, lr=lr)
            model.train()
            for batch in batches:
                if taken >= steps:
                    break
                loss = loss_fn(model, batch)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"head warm-up loss is {loss.item()} at step {taken}")
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                taken += 1
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
            model.train(was_training)
    return taken
