"""Predictions and metrics on a task's evaluation split, for classifiers, regressors and causal LMs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taso import causal_lm, metrics
from taso.data import TaskSpec, encode, iterate


@torch.no_grad()
def predict(
    model: nn.Module,
    features: Sequence[dict],
    *,
    task_type: str = "classification",
    batch_size: int = 64,
    pad_id: int = 0,
) -> list:
    """Class ids (classification) or values (regression) for tokenized ``features``, in order."""
    was_training = model.training
    model.eval()
    out: list = []
    try:
        for batch in iterate(features, batch_size, pad_id):
            batch.pop("labels")
            logits = model(**batch).logits
            out.extend(logits.squeeze(-1).tolist() if task_type == "regression" else logits.argmax(-1).tolist())
    finally:
        model.train(was_training)
    return out


def evaluate(
    model: nn.Module,
    features: Sequence[dict],
    metric_names: Sequence[str],
    *,
    task_type: str = "classification",
    batch_size: int = 64,
    pad_id: int = 0,
) -> dict[str, float]:
    """Every metric in ``metric_names`` on ``features``, plus the number of examples."""
    pred = predict(model, features, task_type=task_type, batch_size=batch_size, pad_id=pad_id)
    gold = [f["labels"] for f in features]
    return {**metrics.compute(metric_names, pred, gold), "n_examples": len(gold)}


def evaluate_task(
    model: nn.Module,
    tokenizer,
    rows: Sequence[dict],
    spec: TaskSpec,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 256,
) -> dict[str, float]:
    """``spec``'s metrics on ``rows``: a classifier or regressor on its logits, a causal LM on option
    log-likelihoods (a choice task) or greedy generation (a generation task)."""
    if spec.task_type == "causal_lm":
        return causal_lm.evaluate(
            model,
            tokenizer,
            rows,
            spec.metrics,
            options=spec.options,
            batch_size=batch_size,
            max_length=spec.max_length,
            max_new_tokens=max_new_tokens,
        )
    features = encode(rows, tokenizer, spec.max_length)
    return evaluate(
        model, features, spec.metrics, task_type=spec.task_type, batch_size=batch_size, pad_id=tokenizer.pad_token_id
    )
