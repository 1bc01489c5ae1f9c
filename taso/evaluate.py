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
    return {**metrics.compute(metric_names, pred, gold), "n_examples": len(gold), **references(pred, gold, task_type)}


def references(pred: Sequence, gold: Sequence, task_type: str) -> dict[str, float]:
    """What a model that learned nothing would score, beside what this one did, on the same examples.

    Classification: ``majority_accuracy`` (always the commonest gold class), ``accuracy_all``
    (this model's accuracy, whatever the task's metrics) and ``top_prediction_share`` (how
    often it predicts its own commonest class; 1.0 is a constant model). Regression: the
    standard deviations of predictions and labels, the mean squared error, and the labels'
    variance (the error of always predicting their mean).
    """
    n = len(gold)
    if task_type == "classification":
        top = max(map(list(gold).count, set(gold)))
        return {
            "majority_accuracy": top / n,
            "accuracy_all": metrics.accuracy(pred, gold),
            "top_prediction_share": max(map(list(pred).count, set(pred))) / n,
        }
    if task_type == "regression":
        mean = sum(gold) / n
        return {
            "prediction_std": _std(pred),
            "label_std": _std(gold),
            "mse": sum((p - g) ** 2 for p, g in zip(pred, gold, strict=True)) / n,
            "label_variance": sum((g - mean) ** 2 for g in gold) / n,
        }
    return {}


def _std(xs: Sequence[float]) -> float:
    mean = sum(xs) / len(xs)
    return (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5


def degenerate(scores: dict[str, float]) -> str | None:
    """Why a model's eval scores show it learned nothing useful, or None.

    A constant model, a classifier no more accurate than always answering the majority class,
    or a regressor whose error is no lower than always answering the labels' mean. Reads the
    reference figures :func:`references` adds (scores without them are not judged).
    """
    if "top_prediction_share" in scores:
        if scores["top_prediction_share"] == 1.0:
            return "predicts the same class for every example"
        if scores["accuracy_all"] <= scores["majority_accuracy"]:
            return (
                f"accuracy {scores['accuracy_all']:.4f} is no better than always predicting the majority class "
                f"({scores['majority_accuracy']:.4f})"
            )
    if "prediction_std" in scores:
        if scores["prediction_std"] <= 0.01 * scores["label_std"]:
            return (
                f"predictions are near constant (std {scores['prediction_std']:.4g} against the labels' "
                f"{scores['label_std']:.4g})"
            )
        if scores["mse"] >= scores["label_variance"]:
            return (
                f"mean squared error {scores['mse']:.4g} is no lower than always predicting the labels' mean "
                f"({scores['label_variance']:.4g})"
            )
    return None


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
    from taso.heads import head_of

    features = encode(rows, tokenizer, spec.max_length, pairs_apart=head_of(model) == "cosine")
    return evaluate(
        model, features, spec.metrics, task_type=spec.task_type, batch_size=batch_size, pad_id=tokenizer.pad_token_id
    )
