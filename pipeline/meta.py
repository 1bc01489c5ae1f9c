"""The ``meta.json`` that makes every artifact folder explain itself (litgpt's habit)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import taso
from taso.io import write_json


def code_version(root: Path) -> str:
    """taso's version and the project's git commit, ``.dirty`` when taso/, pipeline/ or stages/ have uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Only the code counts: DVC stages dvc.lock as it runs, which says nothing about the code.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "taso", "pipeline", "stages"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"{taso.__version__}+{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return taso.__version__


def write_meta(
    folder: Path,
    *,
    stage: str,
    task: str,
    root: Path,
    params: dict,
    inputs: dict[str, str],
    outputs: dict[str, str] | None = None,
    **extra,
) -> dict:
    """Write ``folder/meta.json``: what produced the folder, from what, with which code."""
    meta = {
        "stage": stage,
        "task": task,
        "params": params,
        "inputs": inputs,
        "outputs": outputs or {},
        "code_version": code_version(root),
        "python": platform.python_version(),
        **extra,
    }
    write_json(Path(folder) / "meta.json", meta)
    return meta


def write_skipped(folder: Path, *, stage: str, task: str, root: Path, reason: str, **extra) -> Path:
    """The outs of a stage with nothing to do for this run: ``folder`` holding only a ``meta.json`` that says why.

    DVC expects every declared out, so a stage the training method does not need still writes
    its folder, and anyone who opens it reads the reason instead of finding it empty.
    """
    from taso.io import atomic_path

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        write_meta(tmp, stage=stage, task=task, root=root, params={}, inputs={}, skipped=reason, **extra)
    return Path(folder)
