"""Sentence pooling as the base model declares it, under a stock ``*ForSequenceClassification`` head.

A sentence-transformers model (all-MiniLM-L6-v2 among them) is trained to be read through its
pooling: ``modules.json`` lists a ``Pooling`` module whose ``config.json`` names the mode (mean of
the token states, the CLS state, or their max), and often a ``Normalize`` after it. BERT's own
classification head reads the pooler instead (the CLS state through a dense layer and tanh),
which such a model never trained. :func:`taso.heads.use_pooling` swaps that pooler for one that pools, so
the classifier (and its dropout) read what the model was trained to produce; nothing else in the
model changes, so PEFT wraps, saves and loads it as any ``*ForSequenceClassification``.

The swap is part of loading, not of the weights: load the base with
:func:`taso.pretrained.load_model` (it applies what the model folder declares), or call
:func:`taso.heads.use_pooling` on a model loaded another way, before ``PeftModel.from_pretrained``.
The adapter's ``taso.json`` records the pooling it was trained with.

This module only reads declarations (no torch: params.yaml's schema uses it); the pooler itself
is in :mod:`taso.heads`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODES = ("mean", "cls", "max")
# sentence-transformers' Pooling config keys for the modes taso implements.
_ST_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


@dataclass(frozen=True)
class Pooling:
    """How a sentence vector is read from token states: ``mode``, then an L2 ``normalize`` or not."""

    mode: str
    normalize: bool = False

    def __str__(self) -> str:
        return self.mode + ("+normalize" if self.normalize else "")

    @classmethod
    def parse(cls, text: str) -> Pooling:
        """The inverse of ``str``: ``mean``, ``mean+normalize``, ..."""
        mode, _, rest = text.partition("+")
        if mode not in MODES or rest not in ("", "normalize"):
            raise ValueError(f"unknown pooling {text!r}; expected one of {', '.join(MODES)}, optionally +normalize")
        return cls(mode, rest == "normalize")


def declared_pooling(model_dir: str | Path) -> Pooling | None:
    """The pooling a sentence-transformers model folder declares (``modules.json``), or None.

    Raises:
        ValueError: the folder declares a pooling mode taso does not implement (named in the message).
    """
    folder = Path(model_dir)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    if "Pooling" not in kinds:
        return None
    config = json.loads((folder / kinds["Pooling"].get("path", "") / "config.json").read_text())
    on = [key for key, value in config.items() if key.startswith("pooling_mode") and value]
    if len(on) != 1 or on[0] not in _ST_KEYS:
        raise ValueError(
            f"{folder}: pooling {on or 'none'} in {kinds['Pooling'].get('path')}/config.json; "
            f"taso implements one of {', '.join(_ST_KEYS)}"
        )
    return Pooling(_ST_KEYS[on[0]], normalize="Normalize" in kinds)
