"""How masks relate: Jaccard overlap per module and overall, and kept fractions per layer."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from taso.masks.compose import _same_modules
from taso.masks.mask import Mask
from taso.targets import layer_index


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb), len(sa | sb)


def compare(a: Mask, b: Mask) -> dict:
    """Jaccard overlap of rows and of columns per module, and overall (Σ|∩| / Σ|∪|)."""
    _same_modules([a, b])
    per, tot = {}, {"rows": [0, 0], "cols": [0, 0]}
    for n in a.modules:
        entry = {}
        for kind in ("rows", "cols"):
            i, u = _jaccard(getattr(a.modules[n], kind), getattr(b.modules[n], kind))
            entry[kind] = i / u if u else 1.0
            tot[kind][0] += i
            tot[kind][1] += u
        per[n] = entry
    overall = {k: (i / u if u else 1.0) for k, (i, u) in tot.items()}
    return {"modules": per, "overall": overall}


def overlap(masks: Mapping[str, Mask]) -> dict:
    """Pairwise Jaccard of rows and of columns, one :func:`compare` per pair.

    Returns ``{"overall": {a: {b: {"rows": j, "cols": j}}}, "modules": {"a|b": {module: ...}}}``;
    ``overall`` is symmetric with 1 on the diagonal, ``modules`` lists each unordered pair once.
    """
    names = list(masks)
    overall: dict[str, dict[str, dict[str, float]]] = {a: {a: {"rows": 1.0, "cols": 1.0}} for a in names}
    modules = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = compare(masks[a], masks[b])
            overall[a][b] = overall[b][a] = pair["overall"]
            modules[f"{a}|{b}"] = pair["modules"]
    return {"overall": overall, "modules": modules}


def layer_profile(mask: Mask) -> list[dict]:
    """Kept fraction of rows and of columns per transformer layer (summed over its modules), lowest layer first."""
    acc: dict[int, list[int]] = {}
    for n, m in mask.modules.items():
        layer = layer_index(n)
        if layer is None:
            continue
        kept = acc.setdefault(layer, [0, 0, 0, 0])
        kept[0] += m.rows.numel()
        kept[1] += m.shape[0]
        kept[2] += m.cols.numel()
        kept[3] += m.shape[1]
    return [
        {"layer": layer, "rows": r / r_all, "cols": c / c_all} for layer, (r, r_all, c, c_all) in sorted(acc.items())
    ]
