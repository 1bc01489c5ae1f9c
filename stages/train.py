"""train: a masked LoRA confined to the task's mask → artifacts/<task>/adapter/ (PEFT format), curve, train.json.

Registers the adapter as a new version of ``<prefix>-<task>`` with alias ``candidate``.
An interrupted run leaves a checkpoint under checkpoints/<task>/ that the next run resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline import registry, tracking
from pipeline.meta import write_meta
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from stages._args import stage_main
from taso import data, pretrained
from taso.importance import Importance
from taso.io import atomic_path, digest_file, write_csv, write_json
from taso.masks import Mask, check_importance, mask_stats
from taso.model import count_trainable, export_peft, inject
from taso.train import train

# What adapter_config.json names as the base, so PEFT's AutoPeftModel finds it when online.
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
PEFT_TASK = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


def run(task: str, root: Path = Path(".")) -> Path:
    params = load_params(root / "params.yaml")
    spec, paths, seed, tp = params.spec(task), TaskPaths(root, task), params.seed, params.train
    mask = Mask.load(paths.mask)
    if params.task(task).mask_source == "own":  # a published mask records its own task's importance
        check_importance(mask, Importance.load(paths.importance / "importance.safetensors"))
    used = {
        "seed": seed,
        "model": params.model.model_dump(),
        "train": tp.model_dump(),
        "task": params.task(task).model_dump(),
    }
    inputs = {"mask": mask.digest}
    # A checkpoint resumes only the run it was made for: same params, same mask.
    run_key = hashlib.sha256(json.dumps([used, mask.digest], sort_keys=True).encode()).hexdigest()[:16]
    checkpoint = paths.checkpoints / f"{run_key}.pt"
    with tracking.stage_run(root, stage="train", task=task, params=used, inputs=inputs) as mlrun:
        tok = pretrained.load_tokenizer(params.model.base)
        model = pretrained.load_model(params.model.base, spec.task_type, num_labels=spec.num_labels, seed=seed)
        inject(model, mask, r=tp.rank, alpha=tp.alpha, dropout=tp.dropout, seed=seed)
        features = data.encode(data.read_rows(spec, "train", seed=seed), tok, spec.max_length)
        result = train(model, features, tp.config(seed), pad_id=tok.pad_token_id, checkpoint=checkpoint)
        counts = count_trainable(model)
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
            "mask_digest": mask.digest,
            "mask_source": params.task(task).mask_source,
            # Lineage of a reused mask: the digest of what mask_source named when derive-mask ran.
            "mask_source_digest": mask.meta.get("source_digest"),
        }
        with atomic_path(paths.adapter) as tmp:
            export_peft(
                model,
                tmp,
                base_model=HUB_IDS.get(params.model.base, params.model.base),
                task_type=PEFT_TASK[spec.task_type],
                extra=adapter_meta,
            )
            adapter_digest = digest_file(tmp / "adapter_model.safetensors")
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
        for point in result.history:
            mlrun.log_metrics({"train_loss": point["loss"], "lr": point["lr"]}, step=point["step"])
        stats = mask_stats(mask, tp.rank)
        name = registry.model_name(params.tracking.registry_prefix, task)
        version = registry.register_adapter(
            name=name,
            adapter_dir=paths.adapter,
            mask_dir=paths.mask,
            meta=adapter_meta,
            run_id=mlrun.run_id,
            tags={
                "task": task,
                "mask_digest": mask.digest,
                "mask_source": adapter_meta["mask_source"],
                **({"mask_source_digest": mask.meta["source_digest"]} if "source_digest" in mask.meta else {}),
                "density": f"{stats['density']:.6f}",
                "trainable_params": str(counts["adapter"]),
                "base_model": str(fp),
                "rank": str(tp.rank),
            },
        )
        summary = {
            "trainable_adapter": counts["adapter"],
            "trainable_head": counts["head"],
            "steps": result.steps,
            "train_seconds": round(result.seconds, 2),
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "resumed_from_step": result.resumed_from,
            "registry_version": int(version),
        }
        write_json(paths.train_metrics, summary)
        mlrun.log_outputs({"adapter": adapter_digest})
        mlrun.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        mlrun.set_tags(
            {
                "taso.registered_model": name,
                "taso.registered_version": version,
                "taso.mask_source": adapter_meta["mask_source"],
                **({"taso.mask_source_digest": mask.meta["source_digest"]} if "source_digest" in mask.meta else {}),
            }
        )
    checkpoint.unlink(missing_ok=True)
    return paths.adapter


if __name__ == "__main__":
    stage_main(run)
