"""Core-region masks: per module, a set of kept rows and a set of kept columns.

A mask is index sets (sorted, unique int32), never a dense boolean matrix, so set
operations are exact and cheap and a saved mask is a few kilobytes. Derivation rules are
pure functions of an :class:`~taso.importance.Importance`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from taso.importance import Importance
from taso.io import ArtifactError, digest_tensors, load_safetensors, read_json, save_safetensors, write_json
from taso.targets import layer_index

RULES = ("rows_cols", "elementwise", "global")


@dataclass(frozen=True)
class ModuleMask:
    """Kept rows and columns of one weight matrix of shape ``(d_out, d_in)``."""

    rows: torch.Tensor
    cols: torch.Tensor
    shape: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "rows", _index(self.rows))
        object.__setattr__(self, "cols", _index(self.cols))
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @property
    def empty(self) -> bool:
        return self.rows.numel() == 0 or self.cols.numel() == 0

    @property
    def density(self) -> float:
        """Fraction of the matrix that the update can touch."""
        return self.rows.numel() * self.cols.numel() / (self.shape[0] * self.shape[1])

    @property
    def kept_fraction(self) -> float:
        """Fraction of a dense LoRA's parameters kept: ``(|rows|+|cols|)/(d_out+d_in)``."""
        return (self.rows.numel() + self.cols.numel()) / (self.shape[0] + self.shape[1])


def _index(x) -> torch.Tensor:
    return torch.unique(torch.as_tensor(x, dtype=torch.int64)).to(torch.int32)


@dataclass(frozen=True)
class Mask:
    """A mask per target module, plus string metadata describing how it was made."""

    modules: dict[str, ModuleMask]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Content digest: module names, shapes and indices; independent of metadata."""
        shapes = {n: list(m.shape) for n, m in self.modules.items()}
        return digest_tensors(self._tensors(), extra=shapes)

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for n, m in self.modules.items():
            out[f"{n}.rows"] = m.rows
            out[f"{n}.cols"] = m.cols
        return out

    def with_meta(self, **meta: object) -> Mask:
        return Mask(self.modules, {**self.meta, **{k: str(v) for k, v in meta.items()}})

    def trainable_params(self, rank: int) -> int:
        """Adapter parameters for rank ``r``: ``Σ r·(|rows|+|cols|)`` over non-empty modules."""
        return sum(rank * (m.rows.numel() + m.cols.numel()) for m in self.modules.values() if not m.empty)

    def save(self, folder, rank: int | None = None) -> str:
        """Write ``mask.safetensors`` and ``mask.json`` into ``folder`` atomically; return the digest."""
        folder = Path(folder)
        digest = self.digest
        shapes = {n: list(m.shape) for n, m in self.modules.items()}
        meta = {**self.meta, "digest": digest, "shapes": _dumps(shapes)}
        save_safetensors(folder / "mask.safetensors", self._tensors(), meta)
        write_json(folder / "mask.json", {"meta": self.meta, "digest": digest, **mask_stats(self, rank or 1)})
        return digest

    @classmethod
    def load(cls, folder_or_file) -> Mask:
        """Read a mask, refusing a corrupt file or one whose content does not match its digest."""
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / "mask.safetensors"
        tensors, meta = load_safetensors(path)
        try:
            shapes = json.loads(meta.pop("shapes"))
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"{path}: not a taso mask (no module shapes in its metadata)") from e
        recorded = meta.pop("digest", None)
        modules = {}
        for name, shape in shapes.items():
            try:
                modules[name] = ModuleMask(tensors[f"{name}.rows"], tensors[f"{name}.cols"], tuple(shape))
            except KeyError as e:
                raise ArtifactError(f"{path}: module {name} has no {e.args[0]} tensor; the file is incomplete") from e
        mask = cls(modules, meta)
        for name, m in modules.items():
            for what, idx, size in (("row", m.rows, m.shape[0]), ("column", m.cols, m.shape[1])):
                if idx.numel() and (idx.min() < 0 or idx.max() >= size):
                    raise ArtifactError(f"{path}: module {name} has a {what} index outside 0..{size - 1}")
        if recorded != mask.digest:
            raise ArtifactError(f"{path}: content does not match its recorded digest {recorded}; the file was altered")
        return mask


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


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


def derive_mask(imp: Importance, rule: str, p: float) -> Mask:
    """Derive a mask by rule name: ``rows_cols``, ``elementwise`` or ``global``."""
    fns = {"rows_cols": derive_rows_cols, "elementwise": derive_elementwise, "global": derive_global}
    if rule not in fns:
        raise ValueError(f"unknown mask rule {rule!r}; choose one of {', '.join(RULES)}")
    return fns[rule](imp, p).with_meta(importance_digest=imp.digest)


def _check_fraction(name: str, p: float) -> None:
    if not 0 < p <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {p}")


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

    return Importance(merged(lambda i: i.rows), merged(lambda i: i.cols), None, {"rule": "weighted"})


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


def mask_stats(mask: Mask, rank: int = 1) -> dict:
    """Per-module counts, density and trainable parameters at ``rank``, and totals."""
    modules = {
        n: {
            "rows": m.rows.numel(),
            "cols": m.cols.numel(),
            "shape": list(m.shape),
            "density": m.density,
            "trainable": 0 if m.empty else rank * (m.rows.numel() + m.cols.numel()),
        }
        for n, m in mask.modules.items()
    }
    total = sum(m.shape[0] * m.shape[1] for m in mask.modules.values())
    kept = sum(m.rows.numel() * m.cols.numel() for m in mask.modules.values() if not m.empty)
    return {
        "rank": rank,
        "modules": modules,
        "n_modules": sum(not m.empty for m in mask.modules.values()),
        "density": kept / total if total else 0.0,
        "trainable_params": mask.trainable_params(rank),
    }


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


def check_fits(mask: Mask, model: nn.Module) -> None:
    """Refuse a mask whose modules or shapes differ from ``model``'s linear layers, naming the mismatch."""
    linears: Mapping[str, nn.Linear] = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [n for n in mask.modules if n not in linears]
    if missing:
        raise ArtifactError(
            f"mask modules not found in the model: {missing[:3]}{' ...' if len(missing) > 3 else ''} "
            f"(mask base model: {mask.meta.get('base_model', 'unknown')}); derive the mask for this model"
        )
    for n, m in mask.modules.items():
        lin = linears[n]
        if m.shape != (lin.out_features, lin.in_features):
            raise ArtifactError(
                f"mask module {n} has shape {m.shape} but the model's layer is "
                f"{(lin.out_features, lin.in_features)}; the mask was made for another base model"
            )


def shape_mismatch(mask: Mask, shapes: Mapping[str, Sequence[int]]) -> str | None:
    """What differs between a mask's modules and ``shapes`` (module → ``(d_out, d_in)``), or None if they agree.

    For checks against an importance map (``Importance.shapes``), where no model is at hand.
    """

    def few(names: list[str]) -> str:
        return f"{names[:3]}{' ...' if len(names) > 3 else ''}"

    problems = []
    if extra := sorted(set(mask.modules) - set(shapes)):
        problems.append(f"mask modules not in the model: {few(extra)}")
    if absent := sorted(set(shapes) - set(mask.modules)):
        problems.append(f"model modules not in the mask: {few(absent)}")
    if wrong := [n for n in mask.modules if n in shapes and mask.modules[n].shape != tuple(shapes[n])]:
        more = f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else ""
        problems.append(
            f"module {wrong[0]} has shape {mask.modules[wrong[0]].shape} in the mask, {tuple(shapes[wrong[0]])} in the model{more}"
        )
    return "; ".join(problems) or None


def check_importance(mask: Mask, importance: Importance) -> None:
    """Refuse a mask whose recorded importance digest is not ``importance``'s, naming both digests.

    A mask and an importance map that disagree mean one of them is stale (an interrupted or
    hand-edited run), so training on the mask would not be training on this task's core region.

    Raises:
        ArtifactError: the mask records no importance digest, or another one.
    """
    recorded, actual = mask.meta.get("importance_digest"), importance.digest
    if not recorded:
        raise ArtifactError(
            "the mask records no importance digest (meta importance_digest); "
            "derive it with taso.masks.derive_mask or the derive-mask stage"
        )
    if recorded != actual:
        raise ArtifactError(
            f"the mask was derived from importance {recorded}, but the importance given is {actual}; "
            "one of them is stale: re-run derive-mask (dvc repro) so that they agree"
        )


def load_for_model(folder_or_file, model: nn.Module) -> Mask:
    """Load a mask and check that it fits ``model``."""
    mask = Mask.load(folder_or_file)
    check_fits(mask, model)
    return mask


def read_mask_json(folder) -> dict:
    """The human-readable sidecar of a saved mask."""
    return read_json(Path(folder) / "mask.json")
