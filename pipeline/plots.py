"""Figures the pipeline declares as DVC plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import torch

from taso.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)


def importance_heatmap(full: torch.Tensor, path: Path, *, top: float = 0.05, title: str = "") -> None:
    """Mark the top ``top`` share of entries of one importance matrix, as the paper's Figure 2 does.

    Kept rows and columns show up as horizontal and vertical lines when importance
    concentrates in a core region.
    """
    plt = _pyplot()
    k = max(1, int(top * full.numel()))
    threshold = full.flatten().kthvalue(full.numel() - k + 1).values
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.imshow((full >= threshold).float().numpy(), cmap="Greys", interpolation="nearest", aspect="auto")
    ax.set_xlabel("input feature (column)")
    ax.set_ylabel("output feature (row)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def placeholder(path: Path, text: str) -> None:
    """A small figure that only says ``text``, for a declared plot that has nothing to show."""
    fig = _pyplot().figure(figsize=(6, 1.2), dpi=100)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    _save(fig, path)


def overlap_heatmap(names: list[str], rows: list[list[float]], cols: list[list[float]], path: Path) -> None:
    """Pairwise Jaccard overlap of the tasks' kept rows and kept columns, side by side."""
    plt = _pyplot()
    size = 2.5 + 0.6 * len(names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size), dpi=100)
    for ax, values, kind in zip(axes, (rows, cols), ("rows", "columns"), strict=True):
        ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i, line in enumerate(values):
            for j, v in enumerate(line):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
        ax.set_title(f"Jaccard overlap of kept {kind}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def layer_profiles(profiles: dict[str, list[dict]], path: Path) -> None:
    """Per task, the kept fraction of rows and of columns in each layer."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100, sharey=True)
    for ax, kind, label in zip(axes, ("rows", "cols"), ("rows", "columns"), strict=True):
        for name, profile in profiles.items():
            ax.plot([p["layer"] for p in profile], [p[kind] for p in profile], marker="o", label=name)
        ax.set_xlabel("layer")
        ax.set_title(f"kept fraction of {label}", fontsize=9)
    axes[0].set_ylabel("fraction kept")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
