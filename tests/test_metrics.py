"""Metrics against scipy / scikit-learn, and GSM8K-style answer extraction."""

from __future__ import annotations

import random

import pytest

from taso import metrics
from taso.evaluate import degenerate, evaluate, predict, references

scipy_stats = pytest.importorskip("scipy.stats")
sk_metrics = pytest.importorskip("sklearn.metrics")


def labels(seed: int, n: int = 200, p: float = 0.5) -> list[int]:
    rng = random.Random(seed)
    return [int(rng.random() < p) for _ in range(n)]


CLASS_CASES = [
    (labels(0), labels(1)),
    (labels(2, p=0.8), labels(3, p=0.3)),
    ([1, 0, 1, 1, 0], [1, 0, 1, 1, 0]),  # perfect
    ([0, 1, 0, 0, 1], [1, 0, 1, 1, 0]),  # all wrong
]


@pytest.mark.parametrize(("pred", "gold"), CLASS_CASES)
def test_classification_metrics_match_sklearn(pred, gold):
    assert metrics.accuracy(pred, gold) == pytest.approx(sk_metrics.accuracy_score(gold, pred))
    assert metrics.f1(pred, gold) == pytest.approx(sk_metrics.f1_score(gold, pred))
    assert metrics.matthews(pred, gold) == pytest.approx(sk_metrics.matthews_corrcoef(gold, pred))


def test_degenerate_classification():
    # No positive prediction and no positive label: sklearn's zero_division=0 convention.
    assert metrics.f1([0, 0], [0, 0]) == 0.0 == sk_metrics.f1_score([0, 0], [0, 0], zero_division=0)
    # A constant prediction has no correlation.
    assert metrics.matthews([1, 1, 1], [0, 1, 0]) == 0.0 == sk_metrics.matthews_corrcoef([0, 1, 0], [1, 1, 1])
    assert metrics.accuracy(["a", "b"], ["a", "c"]) == 0.5


def reals(seed: int, n: int = 100, ties: bool = False) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.randint(0, 5)) if ties else rng.gauss(0, 1) for _ in range(n)]


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (reals(0), reals(1)),
        (reals(2), [x * 3 + 1 for x in reals(2)]),  # perfectly linear
        (reals(4, ties=True), reals(5, ties=True)),  # many ties: mean ranks
        ([1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, 16.0]),  # monotone but not linear
    ],
)
def test_correlations_match_scipy(pred, gold):
    assert metrics.pearson(pred, gold) == pytest.approx(scipy_stats.pearsonr(pred, gold)[0], abs=1e-9)
    assert metrics.spearman(pred, gold) == pytest.approx(scipy_stats.spearmanr(pred, gold)[0], abs=1e-9)


def test_correlation_of_a_constant_is_zero():
    assert metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0
    assert metrics.spearman([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("She pays 1,000 + 234 dollars.\n#### 1,234", "1234"),
        ("#### -5", "-5"),
        ("so the answer is 3.50", "3.5"),
        ("The total is 12.0", "12"),
        ("It costs $12.00.", "12"),
        ("#### 100", "100"),
        ("#### 1,000,000", "1000000"),
        ("first 3 then 4 and finally 18.", "18"),
        ("no number at all", None),
        ("", None),
    ],
)
def test_final_number(text, number):
    assert metrics.final_number(text) == number


def test_exact_match_on_gsm8k_style_answers():
    gold = ["... so 2 + 2 = 4\n#### 4", "#### 1,234", "#### 10", "#### 3", "#### 12"]
    pred = ["The answer is 4.", "It costs 1234 dollars", "#### 11", "I don't know", "That is $12.00 in total."]
    assert metrics.exact_match(pred, gold) == 3 / 5
    assert metrics.exact_match(["nothing"], ["nothing either"]) == 0.0  # no number never matches


def test_compute_by_name_and_errors():
    pred, gold = [1, 0, 1, 1], [1, 0, 0, 1]
    out = metrics.compute(["accuracy", "f1", "matthews"], pred, gold)
    assert out == {
        "accuracy": metrics.accuracy(pred, gold),
        "f1": metrics.f1(pred, gold),
        "matthews": metrics.matthews(pred, gold),
    }
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(ValueError, match="bleu"):
        metrics.compute(["accuracy", "bleu"], pred, gold)
    with pytest.raises(ValueError, match="no examples"):
        metrics.compute(["accuracy"], [], [])


def test_evaluate_predicts_in_order_and_restores_mode(make_model, make_features):
    import torch

    model = make_model("bert").train()
    feats = make_features("bert", 10)
    pred = predict(model, feats, batch_size=3)
    assert model.training
    from taso.data import collate

    want = []
    with torch.no_grad():
        model.eval()
        for i in range(0, len(feats), 3):  # the same batches, so the same padding
            batch = collate(feats[i : i + 3], 0)
            batch.pop("labels")
            want += model(**batch).logits.argmax(-1).tolist()
    assert pred == want
    out = evaluate(model, feats, ["accuracy"], batch_size=3)
    gold = [f["labels"] for f in feats]
    assert out == {
        "accuracy": metrics.accuracy(want, gold),
        "n_examples": 10,
        **references(want, gold, "classification"),
    }


def test_references_and_the_degenerate_verdict():
    gold = [0, 0, 0, 1]
    constant = references([0, 0, 0, 0], gold, "classification")
    assert constant == {"majority_accuracy": 0.75, "accuracy_all": 0.75, "top_prediction_share": 1.0}
    assert degenerate(constant) == "predicts the same class for every example"
    chance = references([0, 1, 0, 0], gold, "classification")  # half right on class 1, one wrong: 0.5 < 0.75
    assert degenerate(chance).startswith("accuracy 0.5000 is no better than always predicting the majority class")
    assert degenerate(references([0, 0, 0, 1], gold, "classification")) is None

    labels = [0.0, 1.0, 2.0, 3.0]
    flat = references([1.5, 1.5001, 1.4999, 1.5], labels, "regression")
    assert degenerate(flat).startswith("predictions are near constant")
    backwards = references([3.0, 2.0, 1.0, 0.0], labels, "regression")  # spread, but worse than the mean
    assert backwards["mse"] == 5.0 and backwards["label_variance"] == 1.25
    assert degenerate(backwards).startswith("mean squared error 5 is no lower than always predicting the labels' mean")
    assert degenerate(references([0.1, 1.1, 1.9, 3.2], labels, "regression")) is None
    assert references(["a"], ["a"], "causal_lm") == {} and degenerate({"accuracy": 0.1}) is None
