"""The mask type: per module, a set of kept rows and a set of kept columns; its file format and fit checks.

A mask is index sets (sorted, unique int32), never a dense boolean matrix, so set
operations are exact and cheap and a saved mask is a few kilobytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from taso.importance import Importance
from taso.io import ArtifactError, digest_tensors, load_safetensors, read_json, save_safetensors, write_json
from taso.names import MASK_FILE, MASK_SIDECAR


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
        save_safetensors(folder / MASK_FILE, self._tensors(), meta)
        write_json(folder / MASK_SIDECAR, {"meta": self.meta, "digest": digest, **mask_stats(self, rank or 1)})
        return digest

    @classmethod
    def load(cls, folder_or_file) -> Mask:
        """Read a mask, refusing a corrupt file or one whose content does not match its digest."""
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / MASK_FILE
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
    return read_json(Path(folder) / MASK_SIDECAR)
