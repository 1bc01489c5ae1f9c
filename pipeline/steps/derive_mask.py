"""derive-mask: the region the task trains on → artifacts/<task>/mask/.

The core region comes from the task's own importance or from what its ``mask_source``
names; the training method then says which mask it trains on (``Method.region``: the region
itself, or a random mask of its counts), and that is what is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import sources, tracking
from pipeline.meta import write_meta, write_skipped
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from taso import pretrained
from taso.io import ArtifactError, atomic_path
from taso.masks import Mask, mask_stats, shape_mismatch
from taso.targets import find_targets

log = logging.getLogger(__name__)


def target_shapes(base: str, task_type: str, num_labels: int, targets) -> dict[str, tuple[int, int]]:
    """``(d_out, d_in)`` of every target module of the base model (what a mask from elsewhere must fit)."""
    model = pretrained.load_model(base, task_type, num_labels=num_labels)
    return {n: (m.out_features, m.in_features) for n, m in find_targets(model, targets).items()}


def run(task: str, root: Path = Path(".")) -> Path:
    """Write ``mask.safetensors``, ``mask.json`` and ``meta.json``; a method without a region skips."""
    params = load_params(root / "params.yaml")
    paths, spec, source = TaskPaths(root, task), params.spec(task), params.task(task).mask_source
    if not params.uses_mask():
        return write_skipped(paths.mask, stage="derive-mask", task=task, root=root, reason=params.without_region())
    # No train.rank here: a mask is rows × columns, whatever rank trains on it (mask.json counts at rank 1).
    used = {
        "mask": params.mask.model_dump(),
        "mask_source": source,
        "method": params.train.method,
        "seed": params.seed,
    }
    mask = sources.mask_for_task(params, root, task)
    if source == "own":
        inputs = {"importance": mask.meta["importance_digest"]}
    else:
        shapes = target_shapes(params.model.base, spec.task_type, spec.num_labels, params.model.targets)
        if problem := shape_mismatch(mask, shapes):
            raise ArtifactError(
                f"mask from {source} does not fit {params.model.base} "
                f"(mask base model: {mask.meta.get('base_model') or 'unknown'}): {problem}; "
                "use a mask published for the same base model"
            )
        inputs = {"mask_source": mask.meta["source_digest"]}
    with tracking.stage_run(
        root, method=params.train.method, stage="derive-mask", task=task, params=used, inputs=inputs
    ) as mlrun:
        region = params.method().region(mask)
        # No code version in the mask's own bytes (meta.json has it): the same inputs give the same
        # folder, so a rerun that changes nothing retrains nothing downstream.
        mask = Mask(region.modules, {**mask.meta, **region.meta}).with_meta(
            base_model=str(pretrained.fingerprint(params.model.base)), task=task
        )
        stats = mask_stats(mask)
        digest = mask.digest
        with atomic_path(paths.mask) as tmp:
            tmp.mkdir()
            mask.save(tmp)
            write_meta(
                tmp,
                stage="derive-mask",
                task=task,
                root=root,
                params=used,
                inputs=inputs,
                outputs={"mask": digest},
                density=stats["density"],
                trainable_params_per_rank=stats["trainable_params"],
            )
        mlrun.log_outputs({"mask": digest})
        mlrun.set_tags({"taso.mask_source": source, **_lineage_tags(mask)})
        mlrun.log_metrics({"density": stats["density"], "trainable_params_per_rank": stats["trainable_params"]})
    return paths.mask


def _lineage_tags(mask) -> dict[str, str]:
    keys = {
        "source_digest": "taso.mask_source_digest",
        "source_version": "taso.mask_source_version",
        "inputs": "taso.composition.inputs",
    }
    return {tag: mask.meta[k] for k, tag in keys.items() if k in mask.meta}
