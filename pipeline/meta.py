"""The ``meta.json`` that makes every artifact folder explain itself (litgpt's habit)."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import taso
from taso.io import write_json

CODE_DIRS = ("taso", "pipeline", "stages")


def code_version(root: Path) -> str:
    """taso's version and a digest of the code that ran (every ``.py`` under taso/, pipeline/ and stages/).

    A digest of the sources, not the git commit: a commit that leaves the code alone (a README
    edit, a new task in params.yaml) must not change the bytes of an artifact, or DVC would rerun
    everything downstream of it for nothing. The commit itself is a tag of the stage's MLflow run.
    """
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for path in sorted((Path(root) / d).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{taso.__version__}+src.{h.hexdigest()[:12]}"


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
