"""Which linear layers of a model TASO scores and adapts.

A target spec is ``"all-linear"`` (every ``nn.Linear`` inside a transformer block), a list
of module-name suffixes (PEFT's convention: ``["query", "value"]``), or a regex string
prefixed with ``re:`` that must match the full module name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from taso.io import ArtifactError

# A transformer block is the module at ``...layer.<i>`` / ``...layers.<i>`` / ``...h.<i>``;
# embeddings, poolers and heads live outside such blocks and are never targets.
_BLOCK = re.compile(r"(^|\.)(layer|layers|h|block|blocks)\.\d+\.")

TargetSpec = str | Sequence[str]


def _matches(name: str, spec: TargetSpec) -> bool:
    if isinstance(spec, str):
        if spec == "all-linear":
            return bool(_BLOCK.search(name))
        if spec.startswith("re:"):
            return re.fullmatch(spec[3:], name) is not None
        spec = [spec]
    return any(name == s or name.endswith("." + s) for s in spec)


def find_targets(model: nn.Module, spec: TargetSpec = "all-linear") -> dict[str, nn.Linear]:
    """Return the target linear layers of ``model`` by full module name, in model order.

    Raises:
        ArtifactError: nothing matched (the model does not fit the spec), naming the spec and a few
            linear layers that exist.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = {n: m for n, m in linears.items() if _matches(n, spec)}
    if not found:
        sample = ", ".join(list(linears)[:6]) or "none"
        raise ArtifactError(
            f"target modules {spec!r} (model.targets) match no linear layer of this model; "
            f"its linear layers include: {sample}"
        )
    return found


def layer_index(name: str) -> int | None:
    """The block index in a module name (``bert.encoder.layer.3.x`` -> 3), or None."""
    m = _BLOCK.search(name)
    return int(m.group(0).rstrip(".").rsplit(".", 1)[1]) if m else None


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a ``PeftModel`` (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_names(model: nn.Module) -> list[str]:
    """Top-level task-head modules that train alongside the adapter (new, randomly initialised).

    Sequence-classification models name their head ``classifier`` (BERT) or ``score``
    (Llama); a causal LM's ``lm_head`` is pretrained and stays frozen.
    """
    return [n for n, _ in model.named_children() if n in ("classifier", "score")]


def in_head(name: str, heads: Sequence[str]) -> bool:
    """Whether the parameter ``name`` belongs to one of the ``heads`` (also inside a PEFT wrapper's names)."""
    return name.split(".")[0] in heads or any(f".{h}." in name for h in heads)


# The projections whose output rows are attention heads, laid out head after head: BERT's names and
# Llama's (Mistral, Qwen and others share them). Fused projections (GPT-2's c_attn, GPT-NeoX's
# query_key_value) and other names (DeBERTa's query_proj, T5's q) are not recognised.
HEADED = ("query", "key", "value", "q_proj", "k_proj", "v_proj")


def attention_heads(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """The head width of each of ``names`` whose output rows are attention heads (q, k and v).

    Rows ``[h·d, (h+1)·d)`` of such a matrix make head ``h``. A name that is not a q/k/v
    projection, or a model whose config names no heads, has no entry.
    """
    config = getattr(unwrapped(model), "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        return {}
    width = getattr(config, "head_dim", None) or config.hidden_size // heads
    modules = dict(model.named_modules())
    return {n: width for n in names if n.rsplit(".", 1)[-1] in HEADED and modules[n].out_features % width == 0}
