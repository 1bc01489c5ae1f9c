"""Putting masked LoRA layers into a model, taking them out, and exporting them as a PEFT adapter."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from taso.io import ArtifactError, atomic_path, read_json
from taso.layer import MaskedLoraLinear
from taso.masks import Mask, check_fits
from taso.targets import head_names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def inject(
    model: nn.Module,
    mask: Mask,
    *,
    r: int = 1,
    alpha: float = 2.0,
    dropout: float = 0.0,
    seed: int = 0,
    train_head: bool = True,
) -> nn.Module:
    """Freeze ``model`` and wrap every non-empty masked module in a :class:`MaskedLoraLinear`.

    The task head (``classifier`` / ``score``) stays trainable when ``train_head``. A's
    initialisation is seeded so that the same mask and seed give the same adapter.

    Returns:
        ``model``, changed in place.

    Raises:
        ArtifactError: the mask does not fit the model.
        ValueError: a module of the mask already holds a masked LoRA layer.
    """
    held = [n for n in masked_layers(model) if n in mask.modules]
    if held:
        raise ValueError(f"{held[0]} already holds a masked LoRA layer; call remove() first")
    check_fits(mask, model)
    model.requires_grad_(False)
    g = torch.random.fork_rng()
    # Model order, not mask order: a loaded mask lists its modules sorted by name, and the
    # same mask must draw the same A's whether it was derived in memory or read from a file.
    order = [n for n, _ in model.named_modules() if n in mask.modules]
    with g:
        torch.manual_seed(seed)
        for name in order:
            m = mask.modules[name]
            if m.empty:
                continue
            base = model.get_submodule(name)
            if isinstance(base, MaskedLoraLinear):
                raise ValueError(f"{name} already holds a masked LoRA layer; call remove() first")
            _set_module(model, name, MaskedLoraLinear(base, m.rows, m.cols, r=r, alpha=alpha, dropout=dropout))
    if train_head:
        for h in head_names(model):
            getattr(model, h).requires_grad_(True)
    return model


def masked_layers(model: nn.Module) -> dict[str, MaskedLoraLinear]:
    """Every masked LoRA layer in ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLoraLinear)}


def remove(model: nn.Module, *, merge: bool = False) -> nn.Module:
    """Put the base linears back; with ``merge`` the update is first folded into their weights."""
    for name, layer in masked_layers(model).items():
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        _set_module(model, name, layer.base)
    return model


def merge(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference without the extra matmuls)."""
    for layer in masked_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo :func:`merge`."""
    for layer in masked_layers(model).values():
        layer.unmerge()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (adapter sub-blocks and head), detached, by name."""
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


def count_trainable(model: nn.Module) -> dict[str, int]:
    """Trainable parameters split into adapter and head."""
    adapter = sum(p.numel() for layer in masked_layers(model).values() for p in (layer.lora_A, layer.lora_B))
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"adapter": adapter, "head": total - adapter, "total": total}


def export_peft(
    model: nn.Module, out_dir, *, base_model: str, task_type: str | None, extra: dict | None = None
) -> Path:
    """Write a standard PEFT LoRA adapter equivalent to the masked adapter in ``model``.

    The real ``peft`` library builds and saves it, so ``PeftModel.from_pretrained`` loads it
    unchanged: dense ``A``/``B`` with zeros outside the mask, the task head under
    ``modules_to_save``. ``extra`` (e.g. the mask digest) is written to ``taso.json`` beside it.

    Args:
        model: a model holding masked LoRA layers (unchanged by this call).
        out_dir: the adapter folder, replaced atomically.
        base_model: what ``adapter_config.json`` records as ``base_model_name_or_path``.
        task_type: PEFT task type (``SEQ_CLS``, ``CAUSAL_LM``) or None.
    """
    from peft import LoraConfig, get_peft_model

    layers = masked_layers(model)
    if not layers:
        raise ValueError("the model holds no masked LoRA layer to export")
    first = next(iter(layers.values()))
    heads = head_names(model)
    clean = remove(copy.deepcopy(model))
    # PEFT records the model's own name_or_path; name the base the way the caller wants it found.
    clean.name_or_path = clean.config._name_or_path = base_model
    config = LoraConfig(
        r=first.r,
        lora_alpha=first.alpha,
        lora_dropout=float(getattr(first.dropout, "p", 0.0)),
        target_modules=sorted(layers),
        # PEFT adds the classification heads itself for SEQ_CLS (appending to the list in place).
        modules_to_save=None if task_type == "SEQ_CLS" else (list(heads) or None),
        task_type=task_type,
    )
    with torch.random.fork_rng():  # PEFT initialises LoRA weights we overwrite; keep the caller's RNG
        peft_model = get_peft_model(clean, config)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name, layer in layers.items():
            A, B = layer.dense_lora()
            target = inner.get_submodule(name)
            target.lora_A["default"].weight.copy_(A)
            target.lora_B["default"].weight.copy_(B)
        for h in heads:
            getattr(inner, h).modules_to_save["default"].load_state_dict(getattr(model, h).state_dict())
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        peft_model.save_pretrained(str(tmp))
        (tmp / "taso.json").write_text(json.dumps(extra or {}, indent=2, sort_keys=True) + "\n")
    return out_dir


def adapter_mask_digest(adapter_dir) -> str | None:
    """The digest of the mask an adapter folder was trained on (``taso.json``'s ``mask_digest``), or None."""
    path = Path(adapter_dir) / "taso.json"
    return read_json(path).get("mask_digest") if path.is_file() else None


def check_adapter_mask(adapter_dir, mask: Mask) -> None:
    """Refuse an adapter whose recorded mask digest is not ``mask``'s, naming both digests.

    An adapter is only meaningful with the mask it was trained on: its update is zero outside
    that mask, and lineage (registry tags, comparisons) names the mask by digest.

    Args:
        adapter_dir: a folder written by :func:`export_peft` with ``extra={"mask_digest": ...}``.

    Raises:
        ArtifactError: no digest is recorded, or another one than ``mask.digest``.
    """
    path = Path(adapter_dir) / "taso.json"
    recorded = read_json(path).get("mask_digest")  # a missing file is refused by name
    if recorded is None:
        raise ArtifactError(f"{path}: records no mask_digest; re-export the adapter with the train stage")
    if recorded != mask.digest:
        raise ArtifactError(
            f"{adapter_dir}: the adapter was trained on mask {recorded}, but the mask given is {mask.digest}; "
            "one of them is stale: re-run train (dvc repro) so that they agree"
        )
