"""Evaluation metrics, chosen by name from the task spec. Pure functions of predictions and labels."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# scikit-learn and scipy compute every metric they have; they are imported on first use, so the
# params check (which reads APPLIES_TO below) starts without them. A correlation with a constant
# side is undefined (they return NaN and warn): it is 0.0 here, as a model that learned nothing.


def accuracy(pred: Sequence, gold: Sequence) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(list(gold), list(pred)))


def f1(pred: Sequence[int], gold: Sequence[int], positive: int = 1) -> float:
    """Binary F1 of the ``positive`` class (MRPC's convention); 0.0 when nothing is predicted positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(gold), list(pred), pos_label=positive, average="binary", zero_division=0.0))


def matthews(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation (CoLA's metric; multi-class too); 0.0 when a margin is empty."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(list(gold), list(pred)))


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    return _correlation("pearsonr", pred, gold)


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman's rank correlation; tied values share their mean rank."""
    return _correlation("spearmanr", pred, gold)


def _correlation(name: str, pred: Sequence[float], gold: Sequence[float]) -> float:
    from scipy import stats

    if len(set(pred)) < 2 or len(set(gold)) < 2:
        return 0.0
    return float(getattr(stats, name)(list(pred), list(gold))[0])


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
