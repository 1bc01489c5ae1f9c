"""train: the task's adapter, by the training method params name → artifacts/<task>/adapter/ (PEFT format), curve, train.json.

A method that moves its region while training (LoSiA) also writes where it ended, as a mask in
``subnet/``, and how it got there, ``subnet_history.csv`` (one row per matrix per move); for every
other method ``subnet/`` holds only a ``meta.json`` naming the region it trained on.

Registers the adapter as a new version of ``<prefix>-<task>`` with alias ``candidate`` and a
``method`` tag. An interrupted run leaves a checkpoint under checkpoints/<task>/ that the next
run resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline import registry, tracking
from pipeline.meta import write_meta, write_skipped
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from pipeline.steps.data import read_split, recorded_digest
from taso import data, distributed, pretrained
from taso.export import PEFT_TASK
from taso.heads import pooling_of
from taso.importance import Importance
from taso.io import atomic_path, digest_file, write_csv, write_json
from taso.masks import Mask, check_importance, mask_stats
from taso.names import ADAPTER_WEIGHTS
from taso.train import train

SUBNET_HISTORY = ["step", "layer", "module", "candidate", "block_mass", "row_overlap", "col_overlap"]


def run(task: str, root: Path = Path(".")) -> Path:
    """Train, export the adapter, write the curve and ``train.json``, and register the version."""
    params = load_params(root / "params.yaml")
    spec, paths, seed, tp = params.spec(task), TaskPaths(root, task), params.seed, params.train
    method = params.method()
    mask = Mask.load(paths.mask) if method.needs == "mask" else None
    if params.scores(task):  # a task's own mask records the importance it came from
        check_importance(mask, Importance.load(paths.importance_file))
    used = {
        "seed": seed,
        "model": params.model.model_dump(),
        "train": tp.model_dump(),
        "task": params.task(task).model_dump(),
    }
    if params.train.method == "losia":  # its knobs shape the run: logged, and part of the checkpoint's key
        used["losia"] = params.losia.model_dump()
    inputs = {"data": recorded_digest(root, task, "train")} | ({"mask": mask.digest} if mask else {})
    # A checkpoint resumes only the run it was made for: same params, same data, same mask.
    run_key = hashlib.sha256(json.dumps([used, inputs], sort_keys=True).encode()).hexdigest()[:16]
    checkpoint = paths.checkpoints / f"{run_key}.pt"
    if not distributed.is_main():  # a helper rank under torchrun: its share of each batch, nothing written
        model, features, pad_id, _ = _model_and_features(params, root, task, method, mask)
        train(model, features, tp.config(seed), method=method, pad_id=pad_id, checkpoint=checkpoint, progress=False)
        return paths.adapter
    with tracking.stage_run(
        root,
        project=params,
        stage="train",
        task=task,
        params=used,
        inputs=inputs,
    ) as mlrun:
        model, features, pad_id, pooling = _model_and_features(params, root, task, method, mask)
        head = params.model_kwargs(task)["head"]
        result = train(model, features, tp.config(seed), method=method, pad_id=pad_id, checkpoint=checkpoint)
        counts = method.count_trainable(model)
        fp = pretrained.fingerprint(params.model.base)
        adapter_meta = {
            "base_model": params.model.base,
            "base_fingerprint": str(fp),
            "task": task,
            "task_type": spec.task_type,
            "labels": list(spec.labels) if spec.labels else None,
            "text_fields": list(spec.text_fields),
            "max_length": spec.max_length,
            "answer_template": spec.answer_template,
            # What the head reads; load the base with pretrained.load_model(..., pooling=this) (README).
            "pooling": pooling,
            "head": head if spec.task_type != "causal_lm" else None,
            "method": method.name,
            "data_digest": inputs["data"],  # the train split's examples (artifacts/<task>/data/train.json)
            "mask_digest": mask.digest if mask else None,
            "mask_source": params.task(task).mask_source if mask else None,
            # Lineage of a reused mask: the digest of what mask_source named when derive-mask ran.
            "mask_source_digest": mask.meta.get("source_digest") if mask else None,
            # What a registry alias resolved to then (models:/<name>/<version>): the alias may move since.
            "mask_source_version": mask.meta.get("source_version") if mask else None,
        }
        with atomic_path(paths.adapter) as tmp:
            method.export(
                model,
                tmp,
                base_model=pretrained.hub_id(params.model.base),
                task_type=PEFT_TASK[spec.task_type],
                extra=adapter_meta,
            )
            adapter_digest = digest_file(tmp / ADAPTER_WEIGHTS)
            write_meta(
                tmp,
                stage="train",
                task=task,
                root=root,
                params=used,
                inputs=inputs,
                outputs={"adapter": adapter_digest},
                trainable=counts,
                rates=result.rates,
                adapter=adapter_meta,
            )
        write_csv(paths.train_curve, result.history, ["step", "loss", "lr"])
        # A method that moves its region (LoSiA) publishes where it ended: the region others reuse.
        found = method.mask()
        moved = found is not None and found.digest != (mask.digest if mask else None)
        published = found if moved else mask
        write_csv(paths.subnet_history, method.history(), SUBNET_HISTORY)
        if moved:
            with atomic_path(paths.subnet) as tmp:
                found.save(tmp)
                write_meta(
                    tmp, stage="train", task=task, root=root, params=used, inputs=inputs, outputs={"mask": found.digest}
                )
        else:
            where = f"artifacts/{task}/mask" if mask else "none: it trains without a core region"
            write_skipped(
                paths.subnet, stage="train", task=task, root=root,
                reason=f"train.method {method.name} does not move its region; the region it trained on: {where}",
            )  # fmt: skip
        for point in result.history:
            mlrun.log_metrics({"train_loss": point["loss"], "lr": point["lr"]}, step=point["step"])
        name = registry.model_name(params.tracking.registry_prefix, task)
        version = registry.register_adapter(
            name=name,
            adapter_dir=paths.adapter,
            mask_dir=paths.subnet if moved else paths.mask if mask else None,
            meta=adapter_meta,
            run_id=mlrun.run_id,
            tags=_version_tags(adapter_meta, published, counts, tp.rank),
        )
        summary = {
            "method": method.name,
            "trainable_adapter": counts["adapter"],
            "trainable_head": counts["head"],
            "trainable_backbone": counts["backbone"],
            "steps": result.steps,
            "train_seconds": round(result.seconds, 2),
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "resumed_from_step": result.resumed_from,
            # Regression: the train labels' mean and std, folded into the head after training.
            "target_scale": list(result.target_scale) if result.target_scale else None,
            "registry_version": int(version),
            "registry_run_id": mlrun.run_id,  # evaluate and promote check that this run registered the version
            # How the method trained, where it resolves knobs itself (LoSiA's period from the run length).
            "method_details": method.report(),
        }
        write_json(paths.train_metrics, summary)
        mlrun.log_outputs({"adapter": adapter_digest})
        mlrun.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        mlrun.log_metrics(
            {f"method.{k}": v for k, v in summary["method_details"].items() if isinstance(v, int | float)}
        )
        tags = {
            "taso.method": method.name,
            "taso.registered_model": name,
            "taso.registered_version": version,
            "taso.mask_source": adapter_meta["mask_source"],
            "taso.mask_source_digest": adapter_meta["mask_source_digest"],
            "taso.mask_source_version": adapter_meta["mask_source_version"],
        }
        mlrun.set_tags({k: v for k, v in tags.items() if v is not None})
    checkpoint.unlink(missing_ok=True)
    return paths.adapter


def _model_and_features(params, root: Path, task: str, method, mask: Mask | None) -> tuple:
    """The model the method prepared (on ``mask``), the task's tokenized training rows, the pad id, and
    what the head reads (None for a causal LM)."""
    spec, seed = params.spec(task), params.seed
    tok = pretrained.load_tokenizer(params.model.base)
    kwargs = params.model_kwargs(task)
    base = pretrained.load_model(params.model.base, seed=seed, **kwargs)
    pooling = pooling_of(base) if spec.task_type != "causal_lm" else None
    rows, _ = read_split(root, spec, "train", seed)
    features = data.encode(rows, tok, spec.max_length, pairs_apart=kwargs["head"] == "cosine")
    return method.prepare(base, mask), features, tok.pad_token_id, pooling


def _version_tags(meta: dict, mask: Mask | None, counts: dict, rank: int) -> dict[str, str]:
    """The registry version's tags: what trained it, on which region, at what size (besides the head)."""
    tags = {
        "task": meta["task"],
        "method": meta["method"],
        "trainable_params": str(counts["adapter"] + counts["backbone"]),
        "base_model": meta["base_fingerprint"],
        "rank": str(rank),
        "data_digest": meta["data_digest"],
    }
    if mask is not None:
        tags |= {"mask_digest": mask.digest, "density": f"{mask_stats(mask, rank)['density']:.6f}"}
        if meta["mask_source"]:
            tags["mask_source"] = meta["mask_source"]
        for key in ("mask_source_digest", "mask_source_version"):
            if meta[key]:
                tags[key] = meta[key]
    return tags
