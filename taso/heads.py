"""What a sequence head reads and what it outputs: the declared pooling, and regression's target scale.

:func:`use_pooling` puts a :class:`Pooler` where a BERT-style encoder keeps its pooler, so the
stock classifier reads the sentence vector the base model was trained to produce
(:mod:`taso.pooling` reads which). :func:`fold_target_scale` turns a regression head trained on
standardised targets into one that predicts on the original scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from taso.pooling import Pooling
from taso.targets import head_names, unwrapped


class Pooler(nn.Module):
    """A drop-in for an encoder's ``pooler``: pools the last hidden states over real tokens.

    The encoder calls its pooler with the hidden states alone; the attention mask reaches this
    module through a forward pre-hook on the encoder (:func:`use_pooling`), set for each call.
    """

    def __init__(self, pooling: Pooling):
        super().__init__()
        self.pooling = pooling
        self._mask: torch.Tensor | None = None

    def remember_mask(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._mask = mask if mask is not None else (args[1] if len(args) > 1 else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self._mask
        keep = (
            torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
            if mask is None
            else mask.to(hidden.dtype)
        ).unsqueeze(-1)
        mode = self.pooling.mode
        if mode == "cls":
            out = hidden[:, 0]
        elif mode == "mean":
            out = (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)
        else:  # max over real tokens: padding can never win
            out = hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(1)
        return nn.functional.normalize(out, dim=-1) if self.pooling.normalize else out

    def extra_repr(self) -> str:
        return str(self.pooling)


def use_pooling(model: nn.Module, pooling: Pooling) -> nn.Module:
    """Make ``model``'s sequence head read ``pooling`` instead of its architecture's pooler; returns ``model``.

    Raises:
        ValueError: the model's encoder has no ``pooler`` to replace (its head reads the states
            another way); load it without a declared pooling to use its own head.
    """
    encoder = model.base_model
    if not hasattr(encoder, "pooler"):
        raise ValueError(
            f"{type(model).__name__} has no pooler to replace; taso applies a declared pooling to "
            "BERT-style encoders only"
        )
    pooler = Pooler(pooling)
    encoder.pooler = pooler
    encoder.register_forward_pre_hook(pooler.remember_mask, with_kwargs=True)
    model.config.taso_pooling = str(pooling)
    return model


def pooling_of(model: nn.Module) -> str:
    """What a sequence model's head reads: a :class:`Pooling` as text, or ``architecture`` (its own pooler)."""
    return getattr(model.config, "taso_pooling", None) or "architecture"


def target_scale(features: Sequence[dict]) -> tuple[float, float] | None:
    """``(mean, std)`` of float (regression) labels, or None for class ids and token labels."""
    labels = [f["labels"] for f in features]
    if not labels or not all(isinstance(y, float) for y in labels):
        return None
    mean = sum(labels) / len(labels)
    std = math.sqrt(sum((y - mean) ** 2 for y in labels) / len(labels))
    return mean, std or 1.0


@torch.no_grad()
def fold_target_scale(model: nn.Module, mean: float, std: float) -> None:
    """Make a regression head trained on standardised targets predict on their original scale.

    The output layer ``y = w·h + b`` becomes ``std·w·h + (std·b + mean)``: the same model in
    one linear layer, so the exported head is a stock one and nothing needs undoing at prediction.
    """
    out = output_layer(model)
    if out.out_features != 1:
        raise ValueError(f"a regression head has one output, not {out.out_features}")
    out.weight.mul_(std)
    out.bias.mul_(std).add_(mean)


def output_layer(model: nn.Module) -> nn.Linear:
    """The linear layer that produces a sequence model's logits (inside a PEFT wrapper too)."""
    inner = unwrapped(model)
    heads = head_names(inner)
    if not heads:
        raise ValueError(f"{type(inner).__name__} has no sequence head (classifier or score)")
    head = getattr(inner, heads[0])
    if hasattr(head, "modules_to_save"):  # PEFT's trainable copy of the head
        head = head.modules_to_save["default"]
    head = getattr(head, "out_proj", head)  # RoBERTa-style heads end in out_proj
    if not isinstance(head, nn.Linear):
        raise ValueError(f"the head of {type(inner).__name__} does not end in a linear layer")
    return head


class PairCosine(nn.Module):
    """A bi-encoder head: each text of a pair pooled on its own, their cosine through a linear head.

    The sentence-transformers way of reading a pair (all-MiniLM-L6-v2 was trained for it): a
    regression reads ``score = w · cos(pool(a), pool(b)) + b`` (one output, MSE), a classification
    one logit per class ``w_k · cos + b_k`` (cross-entropy): a class told by how alike the two
    texts are. The encoder keeps its own attribute name (``bert`` for BERT), so target names,
    masks and importance maps are those of the stock ``*ForSequenceClassification``; the head is
    called ``classifier``, so the head's learning rate, PEFT's ``modules_to_save`` and
    :func:`fold_target_scale` treat it as any head. The batch holds the first texts as
    ``input_ids`` ... and the second as ``pair_input_ids`` ... (:func:`taso.data.encode` with
    ``pairs_apart``).
    """

    # Until warm_start_cosine fits it to the training targets: cos 0.5 reads as an average pair.
    INIT = (4.0, -2.0)

    def __init__(self, encoder: nn.Module, num_labels: int = 1):
        super().__init__()
        self.prefix = encoder.base_model_prefix or "encoder"
        setattr(self, self.prefix, encoder)
        self.config = encoder.config
        self.config.taso_head = "cosine"
        self.config.num_labels = num_labels
        self.classifier = nn.Linear(1, num_labels)
        with torch.no_grad():  # a classification starts undecided (every class alike) until its warm start
            self.classifier.weight.fill_(self.INIT[0] if num_labels == 1 else 0.0)
            self.classifier.bias.fill_(self.INIT[1] if num_labels == 1 else 0.0)

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.prefix)

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **pair):
        from transformers.modeling_outputs import SequenceClassifierOutput

        def pooled(ids, mask, types):
            kwargs = {"attention_mask": mask} | ({"token_type_ids": types} if types is not None else {})
            return self.base_model(input_ids=ids, **kwargs).pooler_output

        a = pooled(input_ids, attention_mask, token_type_ids)
        b = pooled(pair["pair_input_ids"], pair.get("pair_attention_mask"), pair.get("pair_token_type_ids"))
        cosine = nn.functional.cosine_similarity(a, b, dim=-1)
        self.last_cosine = cosine.detach()  # what warm_start_cosine fits the head to
        logits = self.classifier(cosine.unsqueeze(-1))
        loss = None
        if labels is not None and logits.shape[-1] == 1:
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def head_of(model: nn.Module) -> str:
    """``cosine`` for a :class:`PairCosine` (inside a PEFT wrapper too), else ``classifier``."""
    inner = unwrapped(model)
    return "cosine" if isinstance(inner, PairCosine) else "classifier"


@torch.no_grad()
def warm_start_cosine(model: nn.Module, batches, labels: Sequence) -> list[tuple[float, float]] | None:
    """Fit a cosine head to ``labels`` on the untrained cosine, before the first step.

    Adam moves the head's few parameters about one learning rate a step, so a head that starts
    far from the targets would spend the run getting there while the encoder bends to make up
    for it. A regression's scale and shift come by least squares; a classification's logits
    from the class means of the cosine (:func:`cosine_class_logits`). Returns each output's
    fitted ``(weight, bias)``, or None for any other head (which is left alone).
    """
    inner = unwrapped(model)
    if not isinstance(inner, PairCosine):
        return None
    was_training = model.training
    model.eval()
    cos = []
    for batch in batches:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        model(**batch)
        cos += inner.last_cosine.tolist()
    model.train(was_training)
    out = output_layer(model)
    labels = list(labels[: len(cos)])
    fitted = (
        [least_squares(cos, labels)] if out.out_features == 1 else cosine_class_logits(cos, labels, out.out_features)
    )
    out.weight.copy_(torch.tensor([[w] for w, _ in fitted]))
    out.bias.copy_(torch.tensor([b for _, b in fitted]))
    return fitted


def least_squares(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(w, b)`` minimising ``Σ (w·x + b − y)²`` (slope 1 where ``x`` does not vary)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    var = sum((v - mx) ** 2 for v in x)
    w = sum((v - mx) * (t - my) for v, t in zip(x, y, strict=True)) / var if var else 1.0
    return w, my - w * mx


def cosine_class_logits(cos: Sequence[float], labels: Sequence[int], k: int) -> list[tuple[float, float]]:
    """Per class ``(w_k, b_k)`` of linear discriminant analysis on one feature: the cosine of a pair of
    class ``k`` taken as normal around the class's mean ``μ̄ + d_k`` with a variance ``σ²`` all
    classes share, so ``w_k = d_k/σ²`` and ``b_k = log π_k − d_k·(μ̄ + d_k/2)/σ²`` (the terms every
    class shares dropped: centred on ``μ̄``, the logits stay small where cosines crowd together).
    Class priors are smoothed by one example, so a class the sample lacks keeps a finite logit."""
    n = len(cos)
    overall = sum(cos) / n
    groups = [[c for c, y in zip(cos, labels, strict=True) if y == j] for j in range(k)]
    offsets = [sum(g) / len(g) - overall if g else 0.0 for g in groups]
    var = sum((c - overall - offsets[y]) ** 2 for c, y in zip(cos, labels, strict=True)) / n or 1e-4
    return [
        (d / var, math.log((len(g) + 1) / (n + k)) - d * (overall + d / 2) / var)
        for g, d in zip(groups, offsets, strict=True)
    ]
