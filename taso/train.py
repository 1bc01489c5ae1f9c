"""The training loop: plain torch, seeded, resumable, and strict about non-finite losses.

Under ``torchrun`` each rank takes its share of every global batch and the gradients are added
over ranks before the step (:mod:`taso.distributed`), so N ranks train as one process with the
whole batch does. Everything method-specific (parameter groups, optimizer,
schedule, per-step hooks, extra checkpoint state) comes from a :class:`~taso.methods.base.Method`,
so the loop never asks which method it runs. Batch order is a pure function of ``(seed, epoch)`` and every
RNG that matters is checkpointed, so an interrupted run resumed from its checkpoint reaches
the same final weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from taso import distributed
from taso.causal_lm import IGNORE
from taso.config import TrainConfig
from taso.data import batch_order, collate, iterate
from taso.heads import fold_target_scale, target_scale, warm_start_cosine
from taso.importance import LossFn, default_loss
from taso.io import atomic_path
from taso.lr import effective_rates
from taso.methods.base import Method

log = logging.getLogger(__name__)

WARM_START_EXAMPLES = 512  # examples a cosine head's least-squares start is fitted on (one forward pass)


class NonFiniteLossError(FloatingPointError):
    """The loss or its gradient became NaN or infinite; the run stopped before applying that step."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; a checkpoint of the last finished step was written."""


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    rates: dict = field(default_factory=dict)
    resumed_from: int = 0
    target_scale: tuple[float, float] | None = None  # regression: the (mean, std) folded into the head


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    per_epoch = math.ceil(n_examples / cfg.batch_size)
    return min(cfg.max_steps, per_epoch * cfg.epochs) if cfg.max_steps else per_epoch * cfg.epochs


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (adapter, head, or all of them), detached, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` back in, refusing missing or mis-shaped tensors."""
    params = dict(model.named_parameters())
    for n, t in state.items():
        if n not in params or params[n].shape != t.shape:
            raise ValueError(
                f"checkpoint tensor {n} {tuple(t.shape)} does not fit this model; was it made with another mask?"
            )
        with torch.no_grad():
            params[n].copy_(t)


@contextlib.contextmanager
def _deferred_signals(flag: dict) -> None:
    """Turn SIGINT/SIGTERM into a flag that the loop checks between steps, so state stays whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _save_checkpoint(path: Path, model, method: Method, opt, sched, step: int, history: list[dict]) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "trainable": trainable_state(model),
                "method": method.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "torch_rng": torch.get_rng_state(),
                "history": history,
            },
            tmp,
        )


def _non_finite(what: str, value: torch.Tensor, step: int, checkpoint: Path | None, saved: int) -> NonFiniteLossError:
    where = f"; the last good checkpoint (step {saved}) is {checkpoint}" if checkpoint and checkpoint.is_file() else ""
    return NonFiniteLossError(f"{what} is {value.item()} at step {step}{where}; lower train.lr or check the data")


def _units(features: Sequence[dict], items: Sequence[int]) -> int:
    """What a batch's mean loss averages over: its labelled tokens (a causal LM's answer tokens, the
    first position never scored) for token labels, else its examples."""
    return sum(
        sum(1 for x in features[i]["labels"][1:] if x != IGNORE) if isinstance(features[i]["labels"], list) else 1
        for i in items
    )


def _forward_backward(model, features, idx, pad_id, loss_fn, params, method, bf16: bool, seed: int) -> torch.Tensor:
    """Loss and gradients of the global batch ``idx``. Under torchrun each rank takes its share of
    the batch and the gradients are added over ranks after weighting each rank's mean by its share
    of what the batch's mean averages over, so N ranks give the gradient of the whole batch's mean,
    as one process does. Each rank then draws its dropout from ``(seed, rank)``, so a resumed run
    repeats an uninterrupted one on every rank."""
    local = distributed.share(idx)
    if distributed.active():
        torch.manual_seed(seed * 1_000_003 + distributed.rank())
    if local:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, collate([features[i] for i in local], pad_id))
        if torch.isfinite(loss):
            loss.backward()
        loss = loss.detach()
    else:  # a last batch smaller than the number of ranks: this rank adds nothing
        loss = torch.zeros(())
    if distributed.active():
        whole = _units(features, idx)
        share = _units(features, local) / whole if whole else 0.0
        # A parameter no rank gave a gradient keeps none (so the optimizer skips it, as one process does).
        present = torch.tensor([float(p.grad is not None) for p in params])
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad.mul_(share))
        grads += [g.mul_(share) for g in method.extra_gradients(model)]
        total = loss.reshape(1).float() * share
        distributed.sum_([*grads, total, present])
        for p, given in zip(params, present.tolist()):
            if not given:
                p.grad = None
        loss = total[0]
    return loss


def train(
    model: nn.Module,
    features: Sequence[dict],
    cfg: TrainConfig,
    *,
    method: Method | None = None,
    pad_id: int = 0,
    checkpoint: str | Path | None = None,
    loss_fn: LossFn = default_loss,
    progress: bool = True,
) -> TrainResult:
    """Train the trainable parameters of ``model`` on tokenized ``features``.

    Args:
        model: a model whose adapter (and head) parameters require grad.
        features: tokenized examples from :func:`taso.data.encode`.
        cfg: optimisation settings.
        method: the method that prepared ``model`` (its groups, optimizer, schedule, hooks and
            checkpoint state); None trains what is trainable with the generic :class:`Method`.
        pad_id: the tokenizer's pad id, for dynamic padding.
        checkpoint: a file to checkpoint to every ``cfg.checkpoint_every`` steps, and to
            resume from when it exists.
        loss_fn: the scalar loss of one batch.

    Returns:
        Steps taken, wall time, the loss/lr history and the effective per-module rates.

    Raises:
        NonFiniteLossError: a loss or gradient is NaN or infinite (the message names the step
            and the last checkpoint, which is kept).
        TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint was written first.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    method = method or Method()
    groups = method.param_groups(model, cfg.lr, gamma=cfg.gamma, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    opt = method.optimizer(groups)
    steps = total_steps(len(features), cfg)
    sched = method.scheduler(opt, math.ceil(cfg.warmup_ratio * steps), steps)
    rates = effective_rates(opt.param_groups)
    params = [p for g in opt.param_groups for p in g["params"]]
    # Regression trains on standardised targets (train's own mean and std), whatever their
    # scale (STS-B's 0-5, prices in thousands); the head is rescaled after the last step.
    scale = target_scale(features)
    if scale is not None:
        features = [{**f, "labels": (f["labels"] - scale[0]) / scale[1]} for f in features]
    if not (checkpoint and Path(checkpoint).is_file()):  # a resumed run has its head already
        sample = features[:WARM_START_EXAMPLES]
        warm_start_cosine(model, iterate(sample, cfg.batch_size, pad_id), [f["labels"] for f in sample])
    step, history = 0, []
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        load_trainable_state(model, state["trainable"])
        method.load_state_dict(state.get("method", {}))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, history = state["step"], state["history"]
        log.info("resumed from %s at step %d", checkpoint, step)
    resumed_from = saved = step
    lengths = [len(f["input_ids"]) for f in features]
    per_epoch = math.ceil(len(features) / cfg.batch_size)
    flag: dict = {}
    start = time.perf_counter()
    model.train()
    # As a context the bar is also cleared when the loop raises, so a one-line error printed
    # next starts on a line of its own instead of trailing the progress bar.
    bar = tqdm(total=steps, initial=step, disable=not progress or not distributed.is_main(), desc="train", leave=False)
    with bar, _deferred_signals(flag):
        while step < steps:
            epoch, offset = divmod(step, per_epoch)
            order = batch_order(lengths, cfg.batch_size, cfg.seed + epoch, group_by_length=cfg.group_by_length)
            for idx in order[offset:]:
                if step >= steps:
                    break
                seed = cfg.seed + step  # dropout under torchrun: per step and rank (see _forward_backward)
                loss = _forward_backward(model, features, idx, pad_id, loss_fn, params, method, cfg.bf16, seed)
                if distributed.any_(not torch.isfinite(loss)):
                    raise _non_finite("loss", loss, step, checkpoint, saved)
                method.on_backward(model, step)
                # A finite loss can still have a non-finite gradient (an overflow in backward);
                # stepping on it would put NaN into the weights, and from there into the next
                # checkpoint, so the "last good checkpoint" would not be good. Clipping at
                # infinity when clipping is off only measures the norm (it scales by exactly 1).
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
                if not torch.isfinite(norm):
                    raise _non_finite("gradient norm", norm, step, checkpoint, saved)
                opt.step()
                sched.step()
                method.on_step(model, step, opt)
                opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == steps:
                    history.append({"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0]})
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                # A signal reaches the ranks at different moments; they stop after the same step.
                if distributed.any_(bool(flag)):
                    flag.setdefault("signal", signal.SIGTERM)  # a rank without it stops with the others
                if checkpoint and (step % cfg.checkpoint_every == 0 or flag):
                    if distributed.is_main():  # every rank holds the same state; one writes it
                        _save_checkpoint(checkpoint, model, method, opt, sched, step, history)
                    saved = step
                if flag:
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(flag['signal']).name} after step {step}; "
                        f"the next run resumes from {checkpoint}"
                    )
    if scale is not None:
        fold_target_scale(model, *scale)
    return TrainResult(step, time.perf_counter() - start, history, rates, resumed_from, scale)
