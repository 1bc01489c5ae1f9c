"""Evaluation metrics, chosen by name from the task spec. Pure functions of predictions and labels."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence


def accuracy(pred: Sequence, gold: Sequence) -> float:
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def f1(pred: Sequence[int], gold: Sequence[int], positive: int = 1) -> float:
    """Binary F1 of the ``positive`` class (MRPC's convention)."""
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation for binary labels (CoLA's metric); 0 when a margin is empty."""
    tp = sum(p == 1 and g == 1 for p, g in zip(pred, gold))
    tn = sum(p == 0 and g == 0 for p, g in zip(pred, gold))
    fp = sum(p == 1 and g == 0 for p, g in zip(pred, gold))
    fn = sum(p == 0 and g == 1 for p, g in zip(pred, gold))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    n = len(gold)
    mp, mg = sum(pred) / n, sum(gold) / n
    cov = sum((p - mp) * (g - mg) for p, g in zip(pred, gold))
    sp = math.sqrt(sum((p - mp) ** 2 for p in pred))
    sg = math.sqrt(sum((g - mg) ** 2 for g in gold))
    return cov / (sp * sg) if sp and sg else 0.0


def _ranks(xs: Sequence[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share their mean rank
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    return pearson(_ranks(pred), _ranks(gold))


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer number of a GSM8K-style text: after ``####`` if present, else the last number."""
    tail = text.split("####")[-1]
    found = _NUMBER.findall(tail) or _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    # 12.0, 12.00 and 12 are one answer (and 3.50 is 3.5): drop trailing decimal zeros.
    return value.rstrip("0").rstrip(".") if "." in value else value


def exact_match(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Share of predictions whose final number equals the reference's final number."""
    return sum(final_number(p) is not None and final_number(p) == final_number(g) for p, g in zip(pred, gold)) / len(
        gold
    )


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
    "exact_match": exact_match,
}


# Which metrics mean something for which kind of task (a causal LM choice task scores like a
# classifier; a generation task by its final number).
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1", "matthews"),
    "regression": ("pearson", "spearman"),
    "causal_lm choice": ("accuracy", "f1", "matthews"),
    "causal_lm generation": ("exact_match",),
}


def compute(names: Sequence[str], pred: Sequence, gold: Sequence) -> dict[str, float]:
    """Every metric in ``names`` for these predictions."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(METRICS)}")
    if not gold:
        raise ValueError("no examples to evaluate")
    return {n: float(METRICS[n](pred, gold)) for n in names}
