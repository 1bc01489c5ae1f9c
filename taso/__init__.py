"""taso: task-aligned sparse LoRA (TASO) — importance, core-region masks, masked LoRA, training.

The method layer: torch, transformers, safetensors and datasets only. It knows nothing
of DVC or MLflow; ``pipeline/`` and ``stages/`` build the product around it.
"""

__version__ = "0.1.0"
