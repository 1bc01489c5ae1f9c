"""Figures the pipeline declares as DVC plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import torch

from taso.io import atomic_path


def importance_heatmap(full: torch.Tensor, path: Path, *, top: float = 0.05, title: str = "") -> None:
    """Mark the top ``top`` share of entries of one importance matrix, as the paper's Figure 2 does.

    Kept rows and columns show up as horizontal and vertical lines when importance
    concentrates in a core region.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, int(top * full.numel()))
    threshold = full.flatten().kthvalue(full.numel() - k + 1).values
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.imshow((full >= threshold).float().numpy(), cmap="Greys", interpolation="nearest", aspect="auto")
    ax.set_xlabel("input feature (column)")
    ax.set_ylabel("output feature (row)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
