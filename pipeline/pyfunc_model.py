"""The registered adapter as an MLflow pyfunc model (models-from-code: nothing is pickled).

MLflow copies this file into the model and runs it on load, so it imports only taso (shipped
with the model as code) and the libraries in the model's requirements, never ``pipeline``.
Its artifacts are ``adapter`` (the PEFT adapter folder), ``mask`` (the mask folder) and
``meta`` (``meta.json``: ``base_model``, ``task_type``, ``labels``, ``max_length``,
``answer_template``). The base model is resolved locally (``minilm``, ``smollm2`` or a
folder), so loading and predicting need no network.

A classifier returns label names; a causal LM returns, for a choice task, the option it
finds most likely, and for a generation task the greedy completion of each prompt.

Example:
    model = mlflow.pyfunc.load_model("models:/taso-sentiment@champion")
    model.predict(pd.DataFrame({"text": ["a fine film"]}))   # -> ["positive"]
    model = mlflow.pyfunc.load_model("models:/taso-gsm8k@champion")
    model.predict(["Tom has 3 apples and buys 2 more. How many?"], params={"max_new_tokens": 64})
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

BATCH_SIZE = 32
MAX_NEW_TOKENS = 256  # a causal LM's longest generated answer unless params say otherwise


def _as_pairs(model_input) -> tuple[list[str], list[str] | None]:
    """Texts (and second texts of sentence pairs) from any input form :meth:`TasoAdapterModel.predict` takes."""
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(
            {
                k: [v] if isinstance(v, str) else list(v)
                for k, v in model_input.items()
                if k in ("text", "text_pair", "prompt")
            }
        )
    if isinstance(model_input, pd.DataFrame) and "prompt" in model_input.columns:
        return [str(t) for t in model_input["prompt"]], None
    if isinstance(model_input, pd.Series):
        return [str(t) for t in model_input], None
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            if len(model_input.columns) != 1:
                raise ValueError(
                    f"input needs a 'text' column (and optionally 'text_pair'); got {list(model_input.columns)}"
                )
            return [str(t) for t in model_input.iloc[:, 0]], None
        texts = [str(t) for t in model_input["text"]]
        pairs = [str(t) for t in model_input["text_pair"]] if "text_pair" in model_input.columns else None
        return texts, pairs
    items = list(model_input)
    if items and all(isinstance(x, list | tuple) and len(x) == 2 for x in items):
        return [str(a) for a, _ in items], [str(b) for _, b in items]
    if all(isinstance(x, str) for x in items):
        return items, None
    raise ValueError(
        "input must be a DataFrame with a 'text' column (and optionally 'text_pair'), "
        "a list of strings, or a list of [text, text_pair] pairs"
    )


class TasoAdapterModel(PythonModel):
    """A base model with a taso adapter (PEFT LoRA) that predicts label names or values from text."""

    def load_context(self, context) -> None:
        """Load the base model named by ``meta.json``, the adapter onto it, and its tokenizer."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        from peft import PeftModel

        from taso import pretrained

        meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.task_type = meta.get("task_type", "classification")
        if self.task_type not in pretrained.TASK_TYPES:
            raise ValueError(
                f"unknown task_type {self.task_type!r} in meta.json; expected one of {pretrained.TASK_TYPES}"
            )
        self.labels = meta.get("labels") or None
        self.answer_template = meta.get("answer_template") or "{}"
        self.max_length = int(meta.get("max_length") or 128)
        num_labels = len(self.labels) if self.labels else int(meta.get("num_labels") or 2)
        # The head reads what it was trained on; an adapter from before pooling was recorded read BERT's pooler.
        pooling = meta.get("pooling") or "architecture"
        self.head = meta.get("head") or "classifier"
        # How many texts one example is (None: not recorded, as in adapters from before it was).
        fields = meta.get("text_fields")
        self.texts_per_example = len(fields) if fields and self.task_type != "causal_lm" else None
        base = pretrained.load_model(
            meta["base_model"], self.task_type, num_labels=num_labels, pooling=pooling, head=self.head
        )
        self.model = PeftModel.from_pretrained(base, context.artifacts["adapter"]).eval()
        self.tokenizer = pretrained.load_tokenizer(meta["base_model"])

    # The DataFrame hint tells MLflow not to infer a schema from it: inputs pass through as given.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list:
        """Label names (class ids when the task has no label names) or regression values, one per input;
        for a causal LM, the chosen option's label or the generated text.

        Args:
            model_input: a DataFrame with a ``text`` column and optionally ``text_pair`` (a causal
                LM also takes ``prompt``), a list of strings, or a list of ``[text, text_pair]`` pairs.
            params: optionally ``{"batch_size": int}``, and ``{"max_new_tokens": int}`` for generation.
        """
        import torch

        texts, pairs = _as_pairs(model_input)
        if self.texts_per_example == 2 and pairs is None:
            raise ValueError(
                "this model was trained on sentence pairs: give [text, text_pair] pairs or a text_pair column"
            )
        if self.texts_per_example == 1 and pairs is not None:
            raise ValueError("this model was trained on single texts: give a list of strings or a 'text' column only")
        batch_size = int((params or {}).get("batch_size", BATCH_SIZE))
        if self.task_type == "causal_lm":
            return self._complete(texts, batch_size, int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS)))
        out: list = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                end = start + batch_size
                logits = self.model(**self._encode(texts[start:end], pairs and pairs[start:end])).logits
                if self.task_type == "regression":
                    out.extend(float(v) for v in logits.squeeze(-1).tolist())
                else:
                    ids = logits.argmax(-1).tolist()
                    out.extend(self.labels[i] if self.labels else int(i) for i in ids)
        return out

    def _encode(self, texts: list[str], pairs: list[str] | None) -> dict:
        """One batch as the head reads it: a pair as one sequence, or (cosine head) as two."""
        kw = {"truncation": True, "max_length": self.max_length, "padding": True, "return_tensors": "pt"}
        if self.head != "cosine":
            return dict(self.tokenizer(texts, pairs, **kw))
        if pairs is None:
            raise ValueError("this model scores sentence pairs: give [text, text_pair] pairs or a text_pair column")
        second = self.tokenizer(pairs, **kw)
        return {**self.tokenizer(texts, **kw), **{f"pair_{k}": v for k, v in second.items()}}

    def _complete(self, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
        from taso import causal_lm

        if not self.labels:
            return causal_lm.generate(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                max_length=self.max_length,
            )
        options = [self.answer_template.replace("{}", v) for v in self.labels]
        scores = causal_lm.option_loglik(
            self.model, self.tokenizer, prompts, options, batch_size=batch_size, max_length=self.max_length
        )
        return [self.labels[i] for i in causal_lm.pick(scores, [causal_lm.offered(self.labels, p) for p in prompts])]


mlflow.models.set_model(TasoAdapterModel())
