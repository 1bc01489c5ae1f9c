"""Shared fixtures: tiny seeded BERT / Llama models built from configs, and random token batches.

Every model here is a few thousand parameters, so a forward/backward takes milliseconds;
dropout is off unless a test asks for it, so numeric comparisons can be exact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# No hub, no dataset downloads: everything in the unit tests is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from taso.data import collate  # noqa: E402

VOCAB = 100
KINDS = ("bert", "llama_cls", "llama_lm")


def _bert_config(dropout: float, num_labels: int, hidden: int, layers: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        classifier_dropout=dropout,
    )


def _llama_config(num_labels: int, hidden: int, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=num_labels,
    )


def build_model(
    kind: str = "bert", *, seed: int = 0, dropout: float = 0.0, num_labels: int = 2, hidden: int = 32, layers: int = 2
):
    """A tiny randomly initialised model of ``kind`` (``bert``, ``llama_cls``, ``llama_lm``), seeded, in eval mode."""
    from transformers import BertForSequenceClassification, LlamaForCausalLM, LlamaForSequenceClassification

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "bert":
            model = BertForSequenceClassification(_bert_config(dropout, num_labels, hidden, layers))
        elif kind == "llama_cls":
            model = LlamaForSequenceClassification(_llama_config(num_labels, hidden, layers))
        elif kind == "llama_lm":
            model = LlamaForCausalLM(_llama_config(num_labels, hidden, layers))
        else:
            raise ValueError(kind)
    return model.eval()


def build_features(kind: str = "bert", n: int = 24, *, seed: int = 0, num_labels: int = 2) -> list[dict]:
    """Tokenized examples as :func:`taso.data.encode` makes them: ragged lengths, token ids 1..VOCAB-1.

    Classification kinds get a class id; the causal LM gets fixed-length sequences whose
    labels are the inputs themselves (so :func:`taso.data.collate` can stack them).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = 8 if kind == "llama_lm" else int(torch.randint(4, 13, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        label = list(ids) if kind == "llama_lm" else int(torch.randint(0, num_labels, (1,), generator=g))
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": label})
    return out


def build_batches(kind: str = "bert", n_batches: int = 3, batch_size: int = 4, *, seed: int = 0) -> list[dict]:
    """Collated (padded) batches of :func:`build_features`."""
    feats = build_features(kind, n_batches * batch_size, seed=seed)
    return [collate(feats[i : i + batch_size], pad_id=0) for i in range(0, len(feats), batch_size)]


def logits_of(model, batch: dict) -> torch.Tensor:
    """Eval-mode logits of ``batch`` (labels dropped), without grad."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def make_model() -> Callable:
    return build_model


@pytest.fixture
def make_features() -> Callable:
    return build_features


@pytest.fixture
def make_batches() -> Callable:
    return build_batches


@pytest.fixture
def get_logits() -> Callable:
    return logits_of


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    """Each tiny model kind in turn: BERT classifier, Llama classifier, Llama causal LM."""
    return request.param


@pytest.fixture
def saved_base(tmp_path) -> Callable:
    """Save a tiny model of a kind with ``save_pretrained``; return (folder, loader) where loader() reloads it.

    Loading twice from the same folder gives two models with identical base weights (and
    head), which is what an adapter is exported from and loaded onto.
    """

    def make(kind: str = "bert", *, seed: int = 0, dropout: float = 0.0, layers: int = 2):
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        folder = tmp_path / f"base-{kind}-{seed}-{layers}"
        build_model(kind, seed=seed, dropout=dropout, layers=layers).save_pretrained(folder)
        auto = AutoModelForCausalLM if kind == "llama_lm" else AutoModelForSequenceClassification

        def load():
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                return auto.from_pretrained(folder).eval()
            finally:
                hf_logging.set_verbosity(verbosity)

        return folder, load

    return make


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved 2-layer BERT whose tokenizer covers the demo tasks' words (see test_stages.tiny_bert_folder)."""
    from test_stages import tiny_bert_folder

    return tiny_bert_folder(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An initialised empty sqlite store, made once per session: creating the tables takes seconds."""
    import mlflow

    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{template}", f"sqlite:///{template}").search_registered_models()
    return template


@pytest.fixture
def store(tmp_path, _mlflow_template, monkeypatch) -> str:
    """A fresh sqlite store in ``tmp_path`` that MLflow and ``pipeline.tracking`` both point at,
    outside any DVC experiment."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
