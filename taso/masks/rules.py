"""Rules that derive a mask from an importance map: pure functions, deterministic under ties.

Also the random mask with another mask's counts, the "does importance matter?" baseline.
"""

from __future__ import annotations

import math

import torch

from taso.importance import Importance
from taso.masks.mask import Mask, ModuleMask
from taso.names import RULES, UNITS
from taso.targets import HEADED


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    # Stable sort so that ties break by index and derivation is deterministic.
    return torch.argsort(scores, descending=True, stable=True)[:k]


def derive_rows_cols(imp: Importance, p: float) -> Mask:
    """Per matrix, keep the top ``ceil(p·d_out)`` rows and ``ceil(p·d_in)`` columns by importance mass."""
    _check_fraction("p", p)
    modules = {}
    for n in imp.rows:
        d_out, d_in = imp.shapes[n]
        modules[n] = ModuleMask(
            _top(imp.rows[n], math.ceil(p * d_out)), _top(imp.cols[n], math.ceil(p * d_in)), (d_out, d_in)
        )
    return Mask(modules, {"rule": "rows_cols", "p": str(p)})


def derive_elementwise(imp: Importance, q: float) -> Mask:
    """Keep the top ``ceil(q·d_out·d_in)`` entries of each matrix, then the rows and columns they touch.

    Needs the full importance maps (score with ``keep_full=True``).
    """
    _check_fraction("q", q)
    if not imp.full or set(imp.full) != set(imp.rows):
        raise ValueError(
            "the elementwise rule needs full importance maps of every module: score with keep_full=True (score.keep_full)"
        )
    modules = {}
    for n, full in imp.full.items():
        d_out, d_in = full.shape
        flat = _top(full.flatten(), math.ceil(q * full.numel()))
        modules[n] = ModuleMask(flat // d_in, flat % d_in, (d_out, d_in))
    return Mask(modules, {"rule": "elementwise", "p": str(q)})


def derive_global(imp: Importance, p: float) -> Mask:
    """Rank rows (and columns) across all matrices, after scaling each matrix's scores to mean 1.

    The total budget equals that of :func:`derive_rows_cols` at the same ``p``, but layers
    whose importance is more concentrated get more of it. A module left with rows but no
    columns (or the reverse) cannot hold an update and is emptied.
    """
    _check_fraction("p", p)
    names = list(imp.rows)

    def pick(marginals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        normed = [marginals[n] / marginals[n].mean().clamp_min(1e-30) for n in names]
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(normed)])
        local = torch.cat([torch.arange(len(s)) for s in normed])
        budget = sum(math.ceil(p * len(s)) for s in normed)
        chosen = _top(torch.cat(normed), budget)
        return {n: local[chosen[owner[chosen] == i]] for i, n in enumerate(names)}

    rows, cols = pick(imp.rows), pick(imp.cols)
    modules = {}
    for n in names:
        r, c = rows[n], cols[n]
        if r.numel() == 0 or c.numel() == 0:
            r, c = r[:0], c[:0]
        modules[n] = ModuleMask(r, c, imp.shapes[n])
    return Mask(modules, {"rule": "global", "p": str(p)})


def whole_heads(mask: Mask, imp: Importance) -> Mask:
    """``mask`` with the rows of each attention q/k/v projection re-chosen in whole heads.

    Each such module keeps as many rows as the rule gave it, so the budget and its split
    between matrices stay the rule's; only which rows changes: heads in order of their mean
    row mass, and where the count is not a multiple of the head width, the best rows of the
    next head. Columns and every other module are untouched. Which rows form heads comes from
    the scorer (``imp.heads``).
    """
    heads = imp.heads
    if not heads:
        raise ValueError(
            "this importance map records no attention heads: it was scored before heads were recorded "
            f"(re-run the score stage), or the model's q/k/v projections are not named {', '.join(HEADED)} "
            "(use mask.unit row)"
        )
    modules = dict(mask.modules)
    for n, width in heads.items():
        m, mass = modules[n], imp.rows[n]
        k = m.rows.numel()
        if k == 0:
            continue
        order = torch.argsort(mass.view(-1, width).mean(1), descending=True, stable=True)
        whole, rest = divmod(k, width)
        rows = (order[:whole, None] * width + torch.arange(width)).reshape(-1)
        if rest:
            start = int(order[whole]) * width
            rows = torch.cat([rows, start + _top(mass[start : start + width], rest)])
        modules[n] = ModuleMask(rows, m.cols, m.shape)
    return Mask(modules, {**mask.meta, "unit": "head"})


def derive_mask(imp: Importance, rule: str, p: float, unit: str = "row") -> Mask:
    """Derive a mask by rule name: ``rows_cols``, ``elementwise`` or ``global``; ``unit="head"``
    then keeps the rows of attention q/k/v in whole heads (:func:`whole_heads`)."""
    fns = {"rows_cols": derive_rows_cols, "elementwise": derive_elementwise, "global": derive_global}
    if rule not in fns:
        raise ValueError(f"unknown mask rule {rule!r}; choose one of {', '.join(RULES)}")
    if unit not in UNITS:
        raise ValueError(f"unknown mask unit {unit!r}; choose one of {', '.join(UNITS)}")
    if unit == "head" and rule == "elementwise":
        raise ValueError("the elementwise rule keeps single entries, not rows: use mask.unit row with it")
    mask = fns[rule](imp, p)
    if unit == "head":
        mask = whole_heads(mask, imp)
    return mask.with_meta(importance_digest=imp.digest)


def _check_fraction(name: str, p: float) -> None:
    if not 0 < p <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {p}")


def random_like(mask: Mask, seed: int = 0) -> Mask:
    """A random mask with the same per-module row and column counts (the "does importance matter?" baseline)."""
    g = torch.Generator().manual_seed(seed)
    modules = {
        n: ModuleMask(
            torch.randperm(m.shape[0], generator=g)[: m.rows.numel()],
            torch.randperm(m.shape[1], generator=g)[: m.cols.numel()],
            m.shape,
        )
        for n, m in mask.modules.items()
    }
    return Mask(modules, {"rule": "random", "seed": str(seed), "like": mask.digest})
