"""Writing a trained adaptation as a standard PEFT adapter folder, and checking one against its mask.

Every method exports through the real ``peft`` library, so ``PeftModel.from_pretrained``
loads the folder unchanged; ``taso.json`` beside the PEFT files records what the folder
was trained on (mask digest, labels, base model).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from taso.io import ArtifactError, atomic_path, read_json
from taso.masks import Mask
from taso.names import ADAPTER_SIDECAR
from taso.targets import head_names

# PEFT's task type for each of taso's task types.
PEFT_TASK = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


def peft_model_over(clean: nn.Module, config, *, base_model: str) -> nn.Module:
    """A PEFT model built from ``config`` over ``clean`` (a plain model the caller hands over, e.g. a copy).

    ``clean`` is renamed ``base_model``, which PEFT records as the adapter's base. PEFT
    initialises the new weights; the caller overwrites them, so the caller's RNG is kept.
    """
    from peft import get_peft_model

    clean.name_or_path = clean.config._name_or_path = base_model
    with torch.random.fork_rng():
        return get_peft_model(clean, config)


@torch.no_grad()
def copy_heads(trained: nn.Module, peft_model: nn.Module) -> None:
    """Put ``trained``'s task heads into ``peft_model``'s ``modules_to_save`` copies."""
    inner = peft_model.base_model.model
    for h in head_names(trained):
        getattr(inner, h).modules_to_save["default"].load_state_dict(getattr(trained, h).state_dict())


def exact_lora_config(ranks: dict[str, int], **kwargs):
    """A PEFT ``LoraConfig`` whose modules hold an update ``ΔW = B·A`` exactly: each module at its own
    rank (``ranks``) with alpha equal to it, so the scale is 1; ``kwargs`` go to ``LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(
        r=1, lora_alpha=1, target_modules=sorted(ranks), rank_pattern=ranks, alpha_pattern=ranks, **kwargs
    )


def head_modules(model: nn.Module, task_type: str | None) -> list[str] | None:
    """``modules_to_save`` for the task heads; PEFT adds the classification heads itself for ``SEQ_CLS``."""
    return None if task_type == "SEQ_CLS" else (head_names(model) or None)


def write_adapter(peft_model: nn.Module, out_dir, extra: dict | None = None) -> Path:
    """Save ``peft_model``'s adapter into ``out_dir`` (replaced atomically) with ``extra`` as ``taso.json``."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        # taso never adapts embeddings; PEFT's "auto" would look the base model up (on the hub,
        # when the name is a hub id) to decide, which offline only ends in a warning.
        peft_model.save_pretrained(str(tmp), save_embedding_layers=False)
        (tmp / ADAPTER_SIDECAR).write_text(json.dumps(extra or {}, indent=2, sort_keys=True) + "\n")
    return out_dir


def adapter_meta(adapter_dir) -> dict:
    """What an adapter folder's ``taso.json`` records (mask digest, labels, head and its pooling); {} without one.

    An adapter that records no pooling was trained on the architecture's pooler, and one that
    records no head on the architecture's classifier.
    """
    path = Path(adapter_dir) / ADAPTER_SIDECAR
    return read_json(path) if path.is_file() else {}


def adapter_mask_digest(adapter_dir) -> str | None:
    """The digest of the mask an adapter folder was trained on (``taso.json``'s ``mask_digest``), or None."""
    return adapter_meta(adapter_dir).get("mask_digest")


def check_adapter_mask(adapter_dir, mask: Mask) -> None:
    """Refuse an adapter whose recorded mask digest is not ``mask``'s, naming both digests.

    An adapter is only meaningful with the mask it was trained on: its update is zero outside
    that mask, and lineage (registry tags, comparisons) names the mask by digest.

    Args:
        adapter_dir: a folder written by a method's export with ``extra={"mask_digest": ...}``.

    Raises:
        ArtifactError: no digest is recorded, or another one than ``mask.digest``.
    """
    path = Path(adapter_dir) / ADAPTER_SIDECAR
    recorded = read_json(path).get("mask_digest")  # a missing file is refused by name
    if recorded is None:
        raise ArtifactError(f"{path}: records no mask_digest; re-export the adapter with the train stage")
    if recorded != mask.digest:
        raise ArtifactError(
            f"{adapter_dir}: the adapter was trained on mask {recorded}, but the mask given is {mask.digest}; "
            "one of them is stale: re-run train (dvc repro) so that they agree"
        )
