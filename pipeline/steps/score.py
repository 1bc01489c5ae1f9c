"""score: importance of every target weight on the calibration set → artifacts/importance/<task>/ + heatmap.

A task that needs no importance (its ``mask_source`` is not ``own``, or the training method
trains without a core region) writes only what DVC expects, saying why (``meta.json``, the
heatmap's title).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline import tracking
from pipeline.meta import write_meta, write_skipped
from pipeline.params import load_params
from pipeline.paths import TaskPaths
from pipeline.plots import importance_heatmap, placeholder
from pipeline.steps.data import read_split, recorded_digest
from taso import data, distributed, pretrained
from taso.heads import warm_start_cosine
from taso.importance import Importance, score_importance, warm_up_head
from taso.io import atomic_path, digest_file
from taso.names import IMPORTANCE_FILE
from taso.targets import find_targets, head_names


def run(task: str, root: Path = Path(".")) -> Path:
    """Write ``importance.safetensors`` (row and column marginals) and ``meta.json``, and the heatmap plot."""
    params = load_params(root / "params.yaml")
    paths, seed = TaskPaths(root, task), params.seed
    if not params.scores(task):
        if not distributed.is_main():
            return paths.importance
        reason = params.why_not_scored(task)
        placeholder(paths.heatmap, reason)
        return write_skipped(paths.importance, stage="score", task=task, root=root, reason=reason)
    used = {
        "seed": seed,
        "model": params.model.model_dump(),
        "score": params.score.model_dump(),
        "task": params.task(task).model_dump(),
    }
    if not distributed.is_main():  # a helper rank under torchrun: its share of the batches, nothing written
        _importance(params, task, paths, root)
        return paths.importance
    inputs = {"calibration": digest_file(paths.calibration_file), "data": recorded_digest(root, task, "train")}
    with tracking.stage_run(
        root,
        project=params,
        stage="score",
        task=task,
        params=used,
        inputs=inputs,
    ) as mlrun:
        imp, heat, heat_module, warmed = _importance(params, task, paths, root)
        fp = pretrained.fingerprint(params.model.base)
        imp.meta.update(base_model=str(fp), task=task, head_warmup_steps=str(warmed))
        with atomic_path(paths.importance) as tmp:
            tmp.mkdir()
            digest = imp.save(tmp / IMPORTANCE_FILE)
            write_meta(
                tmp,
                stage="score",
                task=task,
                root=root,
                params=used,
                inputs=inputs,
                outputs={"importance": digest},
                base_model={"name": fp.name, "digest": fp.digest},
                head_warmup_steps=warmed,
                modules=len(imp.rows),
            )
        what = "|W ⊙ ∂L/∂W|" if params.score.statistic == "taylor" else "Ī ⊙ Ū"
        importance_heatmap(heat, paths.heatmap, title=f"{task}: top 5% of {what} in {heat_module}")
        mlrun.log_outputs({"importance": digest})
        mlrun.log_artifact(paths.heatmap)
    return paths.importance


def _importance(params, task: str, paths: TaskPaths, root: Path) -> tuple[Importance, torch.Tensor, str, int]:
    """The task's importance after the head warm-up (summed over ranks under torchrun), the full map of
    the module the heatmap shows, that module's name, and the warm-up steps taken."""
    spec, seed = params.spec(task), params.seed
    tok = pretrained.load_tokenizer(params.model.base)
    kwargs = params.model_kwargs(task)
    model = pretrained.load_model(params.model.base, seed=seed, **kwargs)
    apart = kwargs["head"] == "cosine"
    calib = data.encode(data.read_jsonl(paths.calibration_file), tok, spec.max_length, pairs_apart=apart)
    if apart and spec.task_type == "classification":
        # A classified pair's cosine head starts at zero (no class order to presume), where the encoder
        # gets no gradient at all: it scores from the closed-form start training begins with.
        warm_start_cosine(
            model, data.iterate(calib, params.score.batch_size, tok.pad_token_id), [f["labels"] for f in calib]
        )
    warmed = 0
    if params.score.head_warmup_steps and head_names(model):  # a causal LM has no new head to warm up
        rows, _ = read_split(root, spec, "train", seed)
        train = data.encode(rows, tok, spec.max_length, pairs_apart=apart)
        batches = data.iterate(train, params.score.batch_size, tok.pad_token_id, seed=seed, shuffle=True)
        # Every rank warms up the same head from the same seed: the warm-up is not split.
        warmed = warm_up_head(model, batches, params.score.head_warmup_steps, lr=params.score.head_warmup_lr, seed=seed)
    heat_module = next(iter(find_targets(model, params.model.targets)))
    sensitive = params.score.statistic == "sensitivity"
    keep = True if params.score.keep_full else [heat_module]
    # bf16 autocast runs the matmuls in bf16; the gradients and the sums stay fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=params.score.precision == "bf16"):
        imp = score_importance(
            model,
            # An EMA weighs the last batches most: a seeded random order, so a sorted file cannot tilt it.
            data.iterate(calib, params.score.batch_size, tok.pad_token_id, seed=seed, shuffle=sensitive),
            params.model.targets,
            keep_full=keep,
            statistic=params.score.statistic,
        )
    heat = imp.full.pop(heat_module) if not params.score.keep_full else imp.full[heat_module]
    imp.full = imp.full or None
    return imp, heat, heat_module, warmed
