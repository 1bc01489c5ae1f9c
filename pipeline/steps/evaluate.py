"""evaluate: the exported PEFT adapter, loaded as a user loads it, on the task's eval split → artifacts/<task>/metrics.json.

Records the metrics on the registered version as ``metric.<name>`` tags; whether the version
becomes ``champion`` is the promote stage's decision, not this one's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline import registry, tracking
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from pipeline.steps.data import read_split, recorded_digest
from taso import pretrained
from taso.evaluate import degenerate, evaluate_task
from taso.export import check_adapter_mask
from taso.io import digest_file, read_json, write_json
from taso.masks import Mask

log = logging.getLogger(__name__)


def run(task: str, root: Path = Path(".")) -> Path:
    """Write ``metrics.json`` and tag the registered version with the metrics."""
    params = load_params(root / "params.yaml")
    spec, paths = params.spec(task), TaskPaths(root, task)
    trained = read_json(paths.train_metrics)
    used = {
        "seed": params.seed,
        "model": params.model.model_dump(),
        "evaluate": params.evaluate.model_dump(),
        "task": params.task(task).model_dump(),
    }
    inputs = {"adapter": digest_file(paths.adapter_weights)}
    if params.uses_mask():
        mask = Mask.load(paths.mask)
        # Before any model loads: an adapter and a mask that disagree mean one of them is stale.
        check_adapter_mask(paths.adapter, mask)
        inputs["mask"] = mask.digest
    inputs["data"] = recorded_digest(root, task, "eval")
    name, version = registry.model_name(params.tracking.registry_prefix, task), str(trained["registry_version"])
    tracking.configure(root)  # the project's store, where train registered the version
    registry.check_trained(name, version, trained.get("registry_run_id"), paths.train_metrics)
    with (
        registry.marked_if_failed(name, version),
        tracking.stage_run(
            root,
            project=params,
            stage="evaluate",
            task=task,
            params=used,
            inputs=inputs,
        ) as mlrun,
    ):
        tok = pretrained.load_tokenizer(params.model.base)
        model = pretrained.load_with_adapter(
            params.model.base, paths.adapter, spec.task_type, num_labels=spec.num_labels, seed=params.seed
        )
        rows, _ = read_split(root, spec, "eval", params.seed)
        start = time.perf_counter()
        scores = evaluate_task(
            model,
            tok,
            rows,
            spec,
            batch_size=params.evaluate.batch_size,
            max_new_tokens=params.evaluate.max_new_tokens,
        )
        scores["eval_seconds"] = round(time.perf_counter() - start, 2)
        for metric in spec.metrics:
            registry.tag_version(name, version, f"metric.{metric}", repr(float(scores[metric])))
        mlrun.log_metrics({k: float(v) for k, v in scores.items()})
        # A model that learned nothing is said so here, in the log, on the run and the version;
        # the promote stage never makes it champion on its own.
        flag = degenerate(scores)
        if flag:
            log.warning("%s: the trained model is degenerate: %s", task, flag)
            registry.tag_version(name, version, "degenerate", flag)
        write_json(paths.metrics, {**scores, "degenerate": flag})
        mlrun.set_tags(
            {"taso.registered_model": name, "taso.registered_version": version, "taso.degenerate": flag or "no"}
        )
    return paths.metrics
