"""The references a trained adapter must beat: the base model with no training at all.

Classification: a linear probe, logistic regression on what the task head reads from the frozen
model (the pooled features, or with the cosine head the cosine of a pair's two texts pooled apart),
its regularisation chosen by 5-fold cross-validation on train. A regression over sentence pairs:
the cosine similarity of the two texts pooled apart, no fitting at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from taso import data, metrics, pretrained

BATCH = 64
MAX_LENGTH = 128


def _model(pooling: str):
    """The frozen base model reading ``pooling`` (``pretrained.load_model``'s, or ``pooler``: BERT's)."""
    return pretrained.load_model(
        "minilm", "regression", pooling="architecture" if pooling == "pooler" else pooling
    ).eval()


@torch.no_grad()
def pooled(model, tok, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
    """The pooled vector the head would read, one row per text (or text pair read as one sequence)."""
    out = []
    for start in range(0, len(texts), BATCH):
        second = list(pairs[start : start + BATCH]) if pairs is not None else None
        enc = tok(
            list(texts[start : start + BATCH]),
            second,
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        out.append(model.base_model(**enc).pooler_output.float().numpy())
    return np.concatenate(out)


def _sides(rows: Sequence[dict]) -> tuple[list[str], list[str] | None]:
    return [r["text"] for r in rows], ([r["text_pair"] for r in rows] if "text_pair" in rows[0] else None)


def linear_probe(
    spec: data.TaskSpec, train: Sequence[dict], evaluation: Sequence[dict], pooling: str, head: str = "classifier"
) -> dict:
    """``spec``'s metrics of logistic regression on what ``head`` reads from the frozen model
    (standardised), fitted on ``train`` with C chosen by 5-fold cross-validation, scored on ``evaluation``."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model, tok = _model(pooling), pretrained.load_tokenizer("minilm")
    read = cosines if head == "cosine" else pooled
    x_train, x_eval = (read(model, tok, *_sides(rows)) for rows in (train, evaluation))
    # L2, accuracy-scored folds: the settings sklearn 1.9 defaults to but is about to change, stated so the
    # reference does not move with a sklearn upgrade.
    cv = LogisticRegressionCV(
        Cs=8, cv=5, max_iter=2000, l1_ratios=(0.0,), scoring="accuracy", use_legacy_attributes=False
    )
    probe = make_pipeline(StandardScaler(), cv)
    probe.fit(x_train, [r["label"] for r in train])
    pred = probe.predict(x_eval).tolist()
    scores = metrics.compute(spec.metrics, pred, [r["label"] for r in evaluation])
    return {**scores, "C": float(probe[-1].C_)}


def cosines(model, tok, texts: Sequence[str], pairs: Sequence[str]) -> np.ndarray:
    """The cosine of each pair's two texts pooled apart, one row (of one feature) per pair."""
    a, b = torch.from_numpy(pooled(model, tok, texts)), torch.from_numpy(pooled(model, tok, pairs))
    return torch.nn.functional.cosine_similarity(a, b).unsqueeze(1).numpy()


def zero_shot_cosine(spec: data.TaskSpec, evaluation: Sequence[dict], pooling: str) -> dict:
    """``spec``'s metrics of the untrained model's cosine similarity of each pair's two texts."""
    model, tok = _model(pooling), pretrained.load_tokenizer("minilm")
    sims = cosines(model, tok, *_sides(evaluation))[:, 0].tolist()
    return metrics.compute(spec.metrics, sims, [r["label"] for r in evaluation])


def reference(
    spec: data.TaskSpec, train: Sequence[dict], evaluation: Sequence[dict], pooling: str, head: str = "classifier"
) -> dict:
    """The no-training reference for ``spec`` read by ``head``: the cosine for a regression over pairs,
    else a linear probe (on the pair's cosine with the cosine head)."""
    if spec.task_type == "regression":
        return {"reference": "zero-shot cosine", **zero_shot_cosine(spec, evaluation, pooling)}
    name = "linear probe on the cosine" if head == "cosine" else "linear probe"
    return {"reference": name, **linear_probe(spec, train, evaluation, pooling, head)}
