"""compose: a mask composed from several tasks' core regions → artifacts/compositions/<name>/mask/.

Driven by params.yaml ``compositions.<name>`` (``op`` over ``of``). The mask records its
lineage (each input's reference and digest); a task uses it with ``mask_source: composition:<name>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import sources, tracking
from pipeline.meta import write_meta, write_skipped
from pipeline.params import load_params
from pipeline.paths import composition_dir
from taso import pretrained
from taso.io import atomic_path
from taso.masks import mask_stats


def run(name: str, root: Path = Path(".")) -> Path:
    """Write the composed mask (``mask.safetensors``, ``mask.json``) and ``meta.json`` with its lineage."""
    params = load_params(root / "params.yaml")
    comp = params.composition(name)
    out = composition_dir(root, name)
    if not params.uses_mask():
        return write_skipped(out, stage="compose", task=name, root=root, reason=params.without_region())
    if why := params.unscored_inputs(name):  # IMP's tasks have masks but no importance to compose
        return write_skipped(out, stage="compose", task=name, root=root, reason=why)
    used = {"composition": comp.model_dump(), "mask": params.mask.model_dump()}
    mask = sources.composition(params, root, name)
    lineage = json.loads(mask.meta["inputs"])
    # By position: refs hold characters (``@``, ``/``, ``..``) that MLflow refuses in tag
    # names; the refs themselves are in the taso.composition.inputs tag.
    inputs = {str(i): entry["digest"] for i, entry in enumerate(lineage)}
    with tracking.stage_run(
        root,
        project=params,
        stage="compose",
        task=name,
        params=used,
        inputs=inputs,
    ) as mlrun:
        mask = mask.with_meta(base_model=str(pretrained.fingerprint(params.model.base)))
        stats = mask_stats(mask)
        with atomic_path(out) as tmp:
            tmp.mkdir()
            digest = mask.save(tmp)
            write_meta(
                tmp,
                stage="compose",
                task=name,
                root=root,
                params=used,
                inputs=inputs,
                outputs={"mask": digest},
                lineage=lineage,
                density=stats["density"],
                trainable_params_per_rank=stats["trainable_params"],
            )
        mlrun.log_outputs({"mask": digest})
        mlrun.set_tags({"taso.composition.op": comp.op, "taso.composition.inputs": mask.meta["inputs"]})
        mlrun.log_metrics({"density": stats["density"], "trainable_params_per_rank": stats["trainable_params"]})
        mlrun.log_artifact(out, "mask")
    return out
