"""Masks by reference: a task's own, a composition, a file or DVC out, a registry version.

One place resolves every way params.yaml and the CLI name a mask, so derive-mask,
compose, analyze and ``taso mask compose`` agree on what a name means and record the same
lineage (each input's reference and digest).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pipeline.params import Params
from pipeline.paths import TaskPaths, composition_dir
from taso.importance import Importance
from taso.io import ArtifactError
from taso.masks import Mask, compose, derive_mask, merge_importance
from taso.names import DEFAULT_RULE, IMPORTANCE_FILE, MASK_FILE

REGISTRY_PREFIXES = ("registry:", "models:/")


def load_mask(ref: str, root: Path = Path(".")) -> Mask:
    """A mask named by ``file:<path>``, a plain path (a mask folder or file, e.g. a DVC out) or a registry URI.

    Relative paths are taken from ``root``. A registry URI (``registry:<name>@<alias>``,
    ``models:/<name>/<version>``, ...) downloads the version's mask from the configured store.
    """
    if ref.startswith(REGISTRY_PREFIXES):
        from pipeline import registry, tracking

        tracking.configure(root)  # the project's store (or MLFLOW_TRACKING_URI), not MLflow's default
        # Resolve once and pull that version, so the mask and the version it records agree even
        # if the alias moves meanwhile; lineage then names the version, not only the alias.
        mv = registry.resolve(ref)
        pinned = f"models:/{mv.name}/{mv.version}"
        with tempfile.TemporaryDirectory() as tmp:
            return Mask.load(registry.pull(pinned, Path(tmp) / "mask", what="mask")).with_meta(source_version=pinned)
    path = _path(ref, root)
    if not path.exists():
        raise ArtifactError(f"{ref}: no such mask folder or file; give a mask folder, file:<path> or a registry URI")
    return Mask.load(path)


def load_importance(ref: str, root: Path = Path(".")) -> Importance:
    """An importance map from a path: a score stage's folder or its ``importance.safetensors``."""
    path = _path(ref, root)
    if path.is_dir():
        path = path / IMPORTANCE_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{ref}: no importance map there; give a score stage's folder (artifacts/importance/<task>)"
        )
    return Importance.load(path)


def _path(ref: str, root: Path) -> Path:
    path = Path(ref.removeprefix("file:"))
    return path if path.is_absolute() else Path(root) / path


def own_importance(root: Path, task: str) -> Importance:
    """The importance map the score stage wrote for ``task``."""
    path = TaskPaths(root, task).importance_file
    if not path.is_file():
        raise ArtifactError(f"{path}: task {task!r} has no importance map yet; run `dvc repro score@{task}` first")
    return Importance.load(path)


def own_mask(params: Params, root: Path, task: str) -> Mask:
    """The mask ``task`` derives from its own importance with params' ``mask`` rule and ``p``.

    Derivation is a pure function, so this is exactly what its derive-mask stage writes. The
    mask records the importance it came from (``importance_digest``).
    """
    imp = own_importance(root, task)
    return derive_mask(imp, params.mask.rule, params.mask.p, params.mask.unit)


def compose_refs(
    op: str,
    refs: Sequence[str],
    *,
    root: Path = Path("."),
    params: Params | None = None,
    weights: Sequence[float] | None = None,
    p: float | None = None,
    rule: str = DEFAULT_RULE,
    unit: str = "row",
) -> Mask:
    """Compose masks (``union``, ``intersection``) or importance maps (``weighted``) named by ``refs``.

    A ref that names a task of ``params`` stands for that task's own mask (or, for
    ``weighted``, its importance); any other ref is a path or registry URI (for
    ``weighted``, a path to an importance map). The result records its lineage in its
    metadata: ``op`` and ``inputs``, a JSON list of ``{"ref", "digest"}``. The same inputs
    always give the same mask and digest.
    """
    tasks = params.tasks if params is not None else {}
    if not refs:
        raise ValueError("compose needs at least one mask")
    if op != "weighted" and (weights is not None or p is not None):
        raise ValueError("weights and p apply to a weighted composition only")
    if op == "weighted":
        imps = [own_importance(root, r) if r in tasks else load_importance(r, root) for r in refs]
        p = p if p is not None else (params.mask.p if params is not None else None)
        if p is None:
            raise ValueError("a weighted composition needs p, the kept fraction of the merged importance")
        mask = derive_mask(merge_importance(imps, weights), rule, p, unit)
        digests = [imp.digest for imp in imps]
    else:
        parts = [own_mask(params, root, r) if r in tasks else load_mask(r, root) for r in refs]
        mask = compose(parts, op)
        digests = [m.digest for m in parts]
    inputs = [{"ref": r, "digest": d} for r, d in zip(refs, digests, strict=True)]
    return mask.with_meta(
        op=op, inputs=json.dumps(inputs), **({"weights": json.dumps(list(weights))} if weights else {})
    )


def composition(params: Params, root: Path, name: str) -> Mask:
    """The mask of ``compositions.<name>`` in params.yaml, with its lineage."""
    comp = params.composition(name)
    mask = compose_refs(
        comp.op,
        comp.of,
        root=root,
        params=params,
        weights=comp.weights,
        p=comp.p,
        rule=params.mask.rule,
        unit=params.mask.unit,
    )
    return mask.with_meta(composition=name)


def composed(root: Path, name: str) -> Mask:
    """The mask compose@<name> wrote: a task trains on exactly the composition DVC tracks."""
    folder = composition_dir(root, name)
    if not (folder / MASK_FILE).is_file():
        raise ArtifactError(f"{folder}: composition {name!r} has no mask yet; run `dvc repro compose@{name}` first")
    return Mask.load(folder)


def composition_name(source: str) -> str | None:
    """``<name>`` of a ``composition:<name>`` mask source, else None."""
    return source.removeprefix("composition:") if source.startswith("composition:") else None


def mask_for_task(params: Params, root: Path, task: str) -> Mask:
    """The mask ``task``'s ``mask_source`` names: its own, a composition, a file or a registry version.

    A mask taken from elsewhere records where from: ``source`` and ``source_digest``, and for a
    registry URI the version it resolved to (``source_version``, ``models:/<name>/<version>``).
    """
    source = params.task(task).mask_source
    if source == "own":
        return own_mask(params, root, task)
    if name := composition_name(source):
        mask = composed(root, name)
    else:
        mask = load_mask(source, root)
    return mask.with_meta(source=source, source_digest=mask.digest)
