"""Composing masks across tasks: union, intersection, importance-weighted merging, and cutting to a budget."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taso.importance import Importance
from taso.io import ArtifactError
from taso.masks.mask import Mask, ModuleMask, _dumps


def _same_modules(masks: Sequence[Mask]) -> list[str]:
    if not masks:
        raise ValueError("composition needs at least one mask")
    first = masks[0].modules
    for i, m in enumerate(masks[1:], 1):
        if set(m.modules) != set(first) or any(m.modules[n].shape != first[n].shape for n in first):
            diff = sorted(set(m.modules) ^ set(first)) or [n for n in first if m.modules[n].shape != first[n].shape]
            raise ArtifactError(
                f"mask {i} does not match mask 0 (modules or shapes differ: {diff[:3]}); compose masks of one base model"
            )
    return list(first)


def _setop(masks: Sequence[Mask], op, name: str) -> Mask:
    out = {}
    for n in _same_modules(masks):
        mods = [m.modules[n] for m in masks]
        rows, cols = set(mods[0].rows.tolist()), set(mods[0].cols.tolist())
        for m in mods[1:]:
            rows, cols = op(rows, set(m.rows.tolist())), op(cols, set(m.cols.tolist()))
        out[n] = ModuleMask(sorted(rows), sorted(cols), mods[0].shape)
    return Mask(out, {"rule": name, "sources": _dumps([m.digest for m in masks])})


def union(masks: Sequence[Mask]) -> Mask:
    """Rows and columns kept by any of ``masks``, per module."""
    return _setop(masks, set.union, "union")


def intersection(masks: Sequence[Mask]) -> Mask:
    """Rows and columns kept by all of ``masks``, per module."""
    return _setop(masks, set.intersection, "intersection")


def merge_importance(imps: Sequence[Importance], weights: Sequence[float] | None = None) -> Importance:
    """Weighted sum of importance maps, each first scaled to unit mass per module.

    Scaling makes tasks with larger losses or more calibration batches count the same;
    derive a mask from the result for an importance-weighted composition.
    """
    weights = list(weights) if weights is not None else [1.0] * len(imps)
    if len(weights) != len(imps) or not imps:
        raise ValueError("merge_importance needs one weight per importance map")
    names = list(imps[0].rows)
    for i, imp in enumerate(imps[1:], 1):
        if imp.shapes != imps[0].shapes:
            raise ArtifactError(
                f"importance map {i} has other modules or shapes than map 0; merge maps of one base model"
            )

    def merged(get) -> dict[str, torch.Tensor]:
        return {
            n: sum(w * get(imp)[n] / get(imp)[n].sum().clamp_min(1e-30) for w, imp in zip(weights, imps)) for n in names
        }

    statistics = {imp.meta.get("statistic", "taylor") for imp in imps}
    if len(statistics) > 1:
        # Ī ⊙ Ū grows like a squared sum: scaled to unit mass it is still more concentrated.
        raise ArtifactError(
            f"importance maps of different statistics ({', '.join(sorted(statistics))}) do not add up; "
            "merge maps scored with the same score.statistic"
        )
    meta = {"rule": "weighted", "statistic": statistics.pop()}
    if all(imp.meta.get("heads") == imps[0].meta.get("heads") for imp in imps) and "heads" in imps[0].meta:
        meta["heads"] = imps[0].meta["heads"]  # one base model: its heads are the maps' heads
    return Importance(merged(lambda i: i.rows), merged(lambda i: i.cols), None, meta)


def compose(masks: Sequence[Mask], op: str) -> Mask:
    """``union`` or ``intersection`` of ``masks``; for ``weighted`` use :func:`merge_importance` then derive."""
    ops = {"union": union, "intersection": intersection}
    if op not in ops:
        raise ValueError(f"op must be union or intersection for masks (weighted composes importance maps), not {op!r}")
    return ops[op](masks)


def cut_to_budget(mask: Mask, like: Mask, importance: Importance) -> Mask:
    """``mask`` cut, per module, to at most ``like``'s row and column counts, keeping what ``importance`` ranks highest.

    Makes a composed mask (a union is larger than any of its parts) comparable with a task's
    own mask at the same parameter budget. Ties keep the lower index, so the cut is deterministic.
    """
    _same_modules([mask, like])
    out = {}
    for n, m in mask.modules.items():
        want = like.modules[n]
        out[n] = ModuleMask(
            _keep_top(m.rows, importance.rows[n], want.rows.numel()),
            _keep_top(m.cols, importance.cols[n], want.cols.numel()),
            m.shape,
        )
    return Mask(out, {**mask.meta, "cut_to": like.digest})


def _keep_top(idx: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    if idx.numel() <= k:
        return idx
    order = torch.sort(scores[idx.long()], descending=True, stable=True).indices[:k]
    return idx[order]
