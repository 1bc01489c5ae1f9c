"""derive-mask: the task's core region from its importance, or a published mask → artifacts/<task>/mask/."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline import tracking
from pipeline.meta import code_version, write_meta
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from stages._args import stage_main
from taso.importance import Importance
from taso.io import ArtifactError, atomic_path
from taso.masks import Mask, derive_mask, mask_stats, shape_mismatch


def load_source(source: str) -> Mask:
    """A mask from ``file:<path>`` or a registry URI (``registry:<name>@<alias>``, ``models:/<name>@<alias>``)."""
    if source.startswith("file:"):
        return Mask.load(Path(source[len("file:") :]))
    from pipeline import registry

    with tempfile.TemporaryDirectory() as tmp:
        return Mask.load(registry.pull(source, Path(tmp) / "mask", what="mask"))


def run(task: str, root: Path = Path(".")) -> Path:
    params = load_params(root / "params.yaml")
    paths, source = TaskPaths(root, task), params.task(task).mask_source
    imp = Importance.load(paths.importance / "importance.safetensors")
    used = {"mask": params.mask.model_dump(), "rank": params.train.rank, "mask_source": source}
    inputs = {"importance": imp.digest}
    with tracking.stage_run(root, stage="derive-mask", task=task, params=used, inputs=inputs) as mlrun:
        if source == "own":
            mask = derive_mask(imp, params.mask.rule, params.mask.p)
        else:
            mask = load_source(source)
            if problem := shape_mismatch(mask, imp.shapes):
                raise ArtifactError(
                    f"mask from {source} does not fit {params.model.base} "
                    f"(mask base model: {mask.meta.get('base_model') or 'unknown'}): {problem}; "
                    "use a mask published for the same base model"
                )
            mask = mask.with_meta(source=source, source_digest=mask.digest)
        mask = mask.with_meta(
            base_model=imp.meta.get("base_model", ""),
            task=task,
            importance_digest=imp.digest,
            budget=mask.trainable_params(params.train.rank),
            code_version=code_version(root),
        )
        stats = mask_stats(mask, params.train.rank)
        with atomic_path(paths.mask) as tmp:
            tmp.mkdir()
            digest = mask.save(tmp, rank=params.train.rank)
            write_meta(
                tmp,
                stage="derive-mask",
                task=task,
                root=root,
                params=used,
                inputs=inputs,
                outputs={"mask": digest},
                density=stats["density"],
                trainable_params=stats["trainable_params"],
            )
        mlrun.log_outputs({"mask": digest})
        mlrun.set_tags(
            {
                "taso.mask_source": source,
                **({"taso.mask_source_digest": mask.meta["source_digest"]} if source != "own" else {}),
            }
        )
        mlrun.log_metrics({"density": stats["density"], "trainable_params": stats["trainable_params"]})
    return paths.mask


if __name__ == "__main__":
    stage_main(run)
