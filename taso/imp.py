"""IMP, iterative magnitude pruning at this project's granularity (../shared/METHODS.md §2): the
lottery-ticket baseline that TASO's one importance pass is measured against.

Start with every row and column; train the masked LoRA from its initialisation θ0; score each kept
row and column by the magnitude of the trained update; drop the fraction ``q`` with the smallest
scores; rewind to θ0 on what is kept; repeat until the kept fraction reaches ``p``. The last mask
is IMP's core region. The pruning and the schedule are pure functions here; :func:`search` runs
the rounds, writing each round's mask as it ends, so a killed search resumes at its round.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from taso import distributed
from taso.config import ImpConfig
from taso.io import write_json
from taso.masks import Mask, ModuleMask
from taso.methods.imp import Imp


def kept_fractions(q: float, p: float) -> list[float]:
    """The kept fraction after each round: ``(1−q)^k`` until it reaches ``p``, the last round exactly ``p``."""
    if not 0 < q < 1:
        raise ValueError(f"imp.q must be in (0, 1), got {q}")
    if not 0 < p <= 1:
        raise ValueError(f"imp.p must be in (0, 1], got {p}")
    out, f = [], 1.0
    while f > p:
        f = max(p, f * (1 - q))
        out.append(f if f > p * (1 + 1e-9) else p)
    return out


def full_mask(shapes: dict[str, tuple[int, int]]) -> Mask:
    """Every row and column of every matrix: round 0's region."""
    return Mask({n: ModuleMask(torch.arange(m), torch.arange(k), (m, k)) for n, (m, k) in shapes.items()})


def magnitudes(deltas: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per matrix, ``(Σ_j |ΔW_ij|, Σ_i |ΔW_ij|)``: each row's and each column's update magnitude."""
    return {n: (d.abs().sum(1), d.abs().sum(0)) for n, d in deltas.items()}


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.argsort(scores, descending=True, stable=True)[:k]  # ties break by index


def prune(mask: Mask, scores: dict[str, tuple[torch.Tensor, torch.Tensor]], fraction: float, rule: str) -> Mask:
    """Keep ``ceil(fraction·d)`` of each matrix's rows and columns (``per_matrix``), or that many in
    total ranked across matrices after scaling each matrix's kept scores to mean 1 (``global``), by
    magnitude among those ``mask`` keeps; nothing dropped comes back."""
    if rule not in ("per_matrix", "global"):
        raise ValueError(f"unknown IMP rule {rule!r}; choose per_matrix or global")
    names = [n for n in mask.modules if not mask.modules[n].empty]
    picked: dict[str, list[torch.Tensor]] = {}
    for axis in (0, 1):
        masked = {}
        for n in names:
            m = mask.modules[n]
            kept = (m.rows if axis == 0 else m.cols).long()
            s = torch.full((m.shape[axis],), -math.inf)
            s[kept] = scores[n][axis][kept].float()
            if rule == "global":
                s[kept] = s[kept] / s[kept].mean().clamp_min(1e-30)
            masked[n] = s
        if rule == "per_matrix":
            for n in names:
                k = math.ceil(fraction * mask.modules[n].shape[axis])
                picked.setdefault(n, []).append(_top(masked[n], k))
        else:
            owner = torch.cat([torch.full((len(masked[n]),), i) for i, n in enumerate(names)])
            local = torch.cat([torch.arange(len(masked[n])) for n in names])
            # The budget counts every matrix, emptied ones too: the kept fraction is of the whole
            # model's rows (or columns), as TASO's global rule counts it, so IMP ends at p's counts.
            scores_all = torch.cat([masked[n] for n in names])
            budget = sum(math.ceil(fraction * m.shape[axis]) for m in mask.modules.values())
            chosen = _top(scores_all, min(budget, int(torch.isfinite(scores_all).sum())))
            for i, n in enumerate(names):
                picked.setdefault(n, []).append(local[chosen[owner[chosen] == i]])
    modules = {}
    for n, m in mask.modules.items():
        rows, cols = picked.get(n, (m.rows[:0], m.cols[:0]))
        if rows.numel() == 0 or cols.numel() == 0:
            rows, cols = rows[:0], cols[:0]
        modules[n] = ModuleMask(rows, cols, m.shape)
    return Mask(modules, {"rule": f"imp-{rule}", "p": str(fraction)})


@dataclass(frozen=True)
class Round:
    index: int  # 1-based: the mask after round ``index``
    kept_fraction: float  # of rows and columns, over all matrices
    final_loss: float | None  # the round's last training loss, on the mask it started from
    seconds: float


def search(
    shapes: dict[str, tuple[int, int]],
    train_round: Callable[[Mask], tuple[dict[str, torch.Tensor], float | None]],
    config: ImpConfig,
    p: float,
    folder: Path,
) -> tuple[Mask, list[Round]]:
    """Run IMP's rounds down to the kept fraction ``p``, each: ``train_round(mask)`` trains from θ0 on
    ``mask`` and returns each matrix's update ``ΔW`` and the final loss; the next mask keeps the
    largest magnitudes.

    Each finished round writes ``folder/round-<k>/`` (the mask) and appends to ``rounds.json``
    before the next starts, so a search killed mid-round restarts that round, and a finished one
    returns at once. Returns the last mask and the rounds' records.

    Under torchrun every rank runs the rounds (``train_round`` trains data-parallel, so every rank
    holds the same update and prunes to the same mask) and rank 0 alone writes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "rounds.json"
    done = [Round(**r) for r in json.loads(log.read_text())] if log.is_file() else []
    mask = Mask.load(folder / f"round-{done[-1].index}") if done else full_mask(shapes)
    for index, fraction in enumerate(kept_fractions(config.q, p), 1):
        if index <= len(done):
            continue
        start = time.perf_counter()
        deltas, loss = train_round(mask)
        mask = prune(mask, magnitudes(deltas), fraction, config.rule)
        done.append(Round(index, kept_fraction(mask), loss, round(time.perf_counter() - start, 2)))
        if distributed.is_main():
            mask.save(folder / f"round-{index}")
            write_json(log, [r.__dict__ for r in done])
    return mask.with_meta(rounds=len(done), q=config.q, steps_per_round=config.steps), done


def kept_fraction(mask: Mask) -> float:
    """Kept rows and columns over all rows and columns of the mask's matrices."""
    kept = sum(m.rows.numel() + m.cols.numel() for m in mask.modules.values())
    return kept / sum(sum(m.shape) for m in mask.modules.values())


def round_trainer(
    load: Callable[[], nn.Module], features: Sequence[dict], cfg, method_config, *, pad_id: int = 0
) -> Callable[[Mask], tuple[dict[str, torch.Tensor], float | None]]:
    """A ``train_round`` for :func:`search`: a fresh model from ``load()`` (the head re-initialised from
    the seed as well), :class:`~taso.methods.imp.Imp` on the round's mask from θ0, ``cfg``'s steps."""
    from taso.injection import masked_layers
    from taso.train import train

    def run(mask: Mask) -> tuple[dict[str, torch.Tensor], float | None]:
        method = Imp(method_config)
        model = method.prepare(load(), mask)
        result = train(model, features, cfg, method=method, pad_id=pad_id, progress=False)
        deltas = {n: layer.delta_weight().detach() for n, layer in masked_layers(model).items()}
        return deltas, result.history[-1]["loss"] if result.history else None

    return run
