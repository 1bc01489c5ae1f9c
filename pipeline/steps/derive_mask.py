"""derive-mask: the region the task trains on → artifacts/<task>/mask/ (and imp_rounds.csv).

The core region comes from the task's own importance, from what its ``mask_source`` names, or,
for a method that searches (IMP), from its rounds of training and pruning, run here (resumable,
under checkpoints/<task>/; each round's mask is kept in ``mask/rounds/`` and ``imp_rounds.csv``
plots them). The training method then says which mask it trains on (``Method.region``: the
region itself, or a random mask of its counts), and that is what is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from pipeline import sources, tracking
from pipeline.meta import write_meta, write_skipped
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from pipeline.steps.data import read_split, recorded_digest
from taso import distributed, pretrained
from taso.io import ArtifactError, atomic_path, digest_file, write_csv
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
    rounds, folder = [], None
    if not distributed.is_main() and not params.searches(task):  # a helper rank with nothing to share
        return paths.mask
    if not params.uses_mask():
        write_csv(paths.imp_rounds, rounds, ROUNDS)
        return write_skipped(paths.mask, stage="derive-mask", task=task, root=root, reason=params.without_region())
    # No train.rank here: a mask is rows × columns, whatever rank trains on it (mask.json counts at rank 1).
    used = {
        "mask": params.mask.model_dump(),
        "mask_source": source,
        "method": params.train.method,
        "seed": params.seed,
    }
    if params.searches(task):
        used |= {"imp": params.imp.model_dump(), "train": params.train.model_dump(), "model": params.model.model_dump()}
        if not distributed.is_main():  # a helper rank under torchrun: its share of each round's batches
            _search(params, root, task, used)
            return paths.mask
        mask, rounds, folder = _search(params, root, task, used)
        inputs = {"search": digest_file(folder / "rounds.json"), "data": recorded_digest(root, task, "train")}
    elif source == "own":
        mask = sources.mask_for_task(params, root, task)
        inputs = {"importance": mask.meta["importance_digest"]}
    else:
        mask = sources.mask_for_task(params, root, task)
        shapes = target_shapes(params.model.base, spec.task_type, spec.num_labels, params.model.targets)
        if problem := shape_mismatch(mask, shapes):
            raise ArtifactError(
                f"mask from {source} does not fit {params.model.base} "
                f"(mask base model: {mask.meta.get('base_model') or 'unknown'}): {problem}; "
                "use a mask published for the same base model"
            )
        inputs = {"mask_source": mask.meta["source_digest"]}
    with tracking.stage_run(
        root,
        project=params,
        stage="derive-mask",
        task=task,
        params=used,
        inputs=inputs,
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
            for r in rounds:  # IMP: every round's mask beside the last (the region)
                Mask.load(folder / f"round-{r.index}").save(tmp / "rounds" / f"round-{r.index}")
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
                **({"search_seconds": round(sum(r.seconds for r in rounds), 2)} if rounds else {}),
            )
        write_csv(paths.imp_rounds, [r.__dict__ for r in rounds], ROUNDS)
        if rounds:  # the time the region cost, to set beside TASO's one importance pass
            mlrun.log_metrics({"search_seconds": sum(r.seconds for r in rounds), "search_rounds": len(rounds)})
        mlrun.log_outputs({"mask": digest})
        mlrun.set_tags({"taso.mask_source": source, **_lineage_tags(mask)})
        mlrun.log_metrics({"density": stats["density"], "trainable_params_per_rank": stats["trainable_params"]})
    if folder is not None:  # the rounds are in the mask now; the scratch copy only served a resume
        shutil.rmtree(folder, ignore_errors=True)
    return paths.mask


ROUNDS = ["index", "kept_fraction", "final_loss", "seconds"]


def _search(params, root: Path, task: str, used: dict):
    """IMP's rounds for ``task`` (:func:`taso.imp.search`), resumable in a scratch folder named by
    everything that defines them (params and data): ``(mask, rounds, folder)``."""
    import dataclasses

    from taso import data
    from taso.imp import round_trainer, search

    paths, spec, seed = TaskPaths(root, task), params.spec(task), params.seed
    kwargs = params.model_kwargs(task)
    tok = pretrained.load_tokenizer(params.model.base)
    rows, data_digest = read_split(root, spec, "train", seed)
    features = data.encode(rows, tok, spec.max_length, pairs_apart=kwargs["head"] == "cosine")
    cfg = dataclasses.replace(params.train.config(seed), max_steps=params.imp.steps, checkpoint_every=10**9)
    trainer = round_trainer(
        lambda: pretrained.load_model(params.model.base, seed=seed, **kwargs),
        features,
        cfg,
        params.train.method_config(seed, params.model.targets),
        pad_id=tok.pad_token_id,
    )
    shapes = target_shapes(params.model.base, spec.task_type, spec.num_labels, params.model.targets)
    # The rounds train on the data, so a resume must find the same data too.
    key = hashlib.sha256(json.dumps([used, data_digest], sort_keys=True).encode()).hexdigest()[:16]
    folder = paths.checkpoints / f"imp-{key}"
    mask, rounds = search(shapes, trainer, params.imp.config(), params.mask.p, folder)
    return mask, rounds, folder


def _lineage_tags(mask) -> dict[str, str]:
    keys = {
        "source_digest": "taso.mask_source_digest",
        "source_version": "taso.mask_source_version",
        "inputs": "taso.composition.inputs",
    }
    return {tag: mask.meta[k] for k, tag in keys.items() if k in mask.meta}
