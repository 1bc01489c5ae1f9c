"""evaluate: the exported PEFT adapter on the task's eval split → artifacts/<task>/metrics.json.

Moves the ``champion`` alias to the version that train registered when it beats the
current champion on the task's first metric (or there is none).
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import registry, tracking
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from stages._args import stage_main
from taso import causal_lm, data, pretrained
from taso.evaluate import evaluate
from taso.io import digest_file, read_json, write_json
from taso.masks import Mask
from taso.model import check_adapter_mask


def load_adapter(base: str, adapter_dir: Path, task_type: str, num_labels: int, seed: int = 0):
    """The base model with a PEFT adapter folder loaded through the real ``peft`` library."""
    from peft import PeftModel

    model = pretrained.load_model(base, task_type, num_labels=num_labels, seed=seed)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def run(task: str, root: Path = Path(".")) -> Path:
    params = load_params(root / "params.yaml")
    spec, paths = params.spec(task), TaskPaths(root, task)
    trained = read_json(paths.train_metrics)
    used = {
        "seed": params.seed,
        "model": params.model.model_dump(),
        "evaluate": params.evaluate.model_dump(),
        "task": params.task(task).model_dump(),
    }
    mask = Mask.load(paths.mask)
    # Before any model loads: an adapter and a mask that disagree mean one of them is stale.
    check_adapter_mask(paths.adapter, mask)
    inputs = {"adapter": digest_file(paths.adapter / "adapter_model.safetensors"), "mask": mask.digest}
    with tracking.stage_run(root, stage="evaluate", task=task, params=used, inputs=inputs) as mlrun:
        tok = pretrained.load_tokenizer(params.model.base)
        model = load_adapter(params.model.base, paths.adapter, spec.task_type, spec.num_labels, params.seed)
        rows = data.read_rows(spec, "eval", seed=params.seed)
        causal = spec.task_type == "causal_lm"
        features = None if causal else data.encode(rows, tok, spec.max_length)
        start = time.perf_counter()
        if causal:  # option log-likelihoods or greedy generation
            scores = causal_lm.evaluate(
                model,
                tok,
                rows,
                spec.metrics,
                options=spec.options,
                batch_size=params.evaluate.batch_size,
                max_length=spec.max_length,
                max_new_tokens=params.evaluate.max_new_tokens,
            )
        else:
            scores = evaluate(
                model,
                features,
                spec.metrics,
                task_type=spec.task_type,
                batch_size=params.evaluate.batch_size,
                pad_id=tok.pad_token_id,
            )
        scores["eval_seconds"] = round(time.perf_counter() - start, 2)
        name, version = registry.model_name(params.tracking.registry_prefix, task), str(trained["registry_version"])
        main = spec.metrics[0]
        for metric in spec.metrics[1:]:
            registry.tag_version(name, version, f"metric.{metric}", str(scores[metric]))
        promoted = registry.promote_if_better(name, version, main, scores[main])
        write_json(paths.metrics, scores)
        mlrun.log_metrics({k: float(v) for k, v in scores.items()})
        mlrun.set_tags(
            {"taso.registered_model": name, "taso.registered_version": version, "taso.promoted": str(promoted)}
        )
    return paths.metrics


if __name__ == "__main__":
    stage_main(run)
