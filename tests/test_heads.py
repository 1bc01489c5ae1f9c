"""Sequence heads: the pooling a model folder declares, and regression on standardised targets."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from taso import data, metrics, pretrained
from taso.heads import Pooler, fold_target_scale, output_layer, pooling_of, target_scale
from taso.pooling import Pooling, declared_pooling
from taso.targets import find_targets
from taso.train import TrainConfig, train


def sentence_transformers_folder(base: Path, dest: Path, mode_key: str, normalize: bool) -> Path:
    """``base`` (a saved model) plus sentence-transformers' module files declaring one pooling."""
    shutil.copytree(base, dest)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "1_Pooling").mkdir()
    keys = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({k: k == mode_key for k in keys}))
    return dest


def test_declared_pooling_reads_modules_json(tiny_model, tmp_path):
    mean = sentence_transformers_folder(tiny_model, tmp_path / "mean", "pooling_mode_mean_tokens", True)
    cls = sentence_transformers_folder(tiny_model, tmp_path / "cls", "pooling_mode_cls_token", False)
    assert declared_pooling(mean) == Pooling("mean", normalize=True)
    assert declared_pooling(cls) == Pooling("cls")
    assert declared_pooling(tiny_model) is None
    (cls / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(ValueError, match="taso implements one of"):
        declared_pooling(cls)
    assert Pooling.parse(str(Pooling("max", True))) == Pooling("max", True)
    with pytest.raises(ValueError, match="unknown pooling 'sum'"):
        Pooling.parse("sum")


def test_the_head_reads_the_declared_pooling_over_real_tokens_only(tiny_model, tmp_path):
    tok = pretrained.load_tokenizer(str(tiny_model))
    texts = ["the film was good .", "bad"]  # the second is padded in the batch
    batch = tok(texts, padding=True, return_tensors="pt")
    alone = tok(texts[1:], return_tensors="pt")

    plain = pretrained.load_model(str(tiny_model)).eval()
    assert pooling_of(plain) == "architecture" and not isinstance(plain.bert.pooler, Pooler)

    folder = sentence_transformers_folder(tiny_model, tmp_path / "mean", "pooling_mode_mean_tokens", True)
    model = pretrained.load_model(str(folder)).eval()
    assert pooling_of(model) == "mean+normalize"
    with torch.no_grad():
        states = model.bert(**batch).last_hidden_state
        pooled = model.bert(**batch).pooler_output
        pooled_alone = model.bert(**alone).pooler_output
    keep = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((states * keep).sum(1) / keep.sum(1), dim=-1)
    torch.testing.assert_close(pooled, want)
    torch.testing.assert_close(pooled[1], pooled_alone[0], atol=1e-5, rtol=1e-5)  # padding changes nothing
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2))

    cls = pretrained.load_model(str(folder), pooling="cls").eval()
    with torch.no_grad():
        torch.testing.assert_close(cls.bert(**batch).pooler_output, states[:, 0])
    with torch.no_grad():  # the classifier reads the pooled vector: logits differ from BERT's pooler head
        assert not torch.allclose(model(**batch).logits, plain(**batch).logits)


def test_regression_learns_on_standardised_targets_and_predicts_on_the_original_scale(tiny_model):
    # A target far from 0 with a large spread: 1000 for "good", 1400 for "bad". Raw MSE at this
    # scale would swamp a few steps; standardised, a tiny model separates them at once.
    tok = pretrained.load_tokenizer(str(tiny_model))
    rows = [{"text": f"the film was {w} .", "label": 1000.0 if w == "good" else 1400.0} for w in ["good", "bad"] * 32]
    features = data.encode(rows, tok, 16)
    assert target_scale(features) == (1200.0, 200.0)
    model = pretrained.load_model(str(tiny_model), "regression", seed=0)
    result = train(model, features, TrainConfig(lr=3e-3, epochs=3, batch_size=16, seed=0), progress=False)
    assert result.target_scale == (1200.0, 200.0)
    model.eval()
    with torch.no_grad():
        pred = model(**data.collate(features, tok.pad_token_id)).logits.squeeze(-1).tolist()
    gold = [f["labels"] for f in features]
    assert metrics.pearson(pred, gold) > 0.95
    assert abs(sum(pred) / len(pred) - 1200.0) < 40  # on the labels' scale, not the standardised one


def test_folding_the_scale_is_the_affine_map_of_the_output(tiny_model):
    model = pretrained.load_model(str(tiny_model), "regression", seed=0).eval()
    tok = pretrained.load_tokenizer(str(tiny_model))
    batch = tok(["good", "bad film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
        fold_target_scale(model, 3.0, 0.5)
        after = model(**batch).logits
    torch.testing.assert_close(after, before * 0.5 + 3.0)
    assert output_layer(model) is model.classifier
    assert target_scale([{"labels": 1}, {"labels": 0}]) is None  # class ids are not rescaled


def pair_rows(n_repeat: int = 4) -> list[dict]:
    words = ["good", "bad", "fine", "dull"]
    rows = [
        {"text": f"the film was {a} .", "text_pair": f"the film was {b} .", "label": 5.0 if a == b else 1.0}
        for a in words
        for b in words
    ]
    return rows * n_repeat


def test_a_pair_encoded_apart_pads_each_side_on_its_own(tiny_model):
    tok = pretrained.load_tokenizer(str(tiny_model))
    rows = [{"text": "good", "text_pair": "the film was very dull .", "label": 1.0}] * 2
    feats = data.encode(rows, tok, 32, pairs_apart=True)
    assert feats[0]["input_ids"] == tok("good")["input_ids"]
    assert feats[0]["pair_input_ids"] == tok("the film was very dull .")["input_ids"]
    batch = data.collate(feats, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 3) and batch["pair_input_ids"].shape == (2, 8)
    assert "text_pair" not in data.encode(rows, tok, 32, pairs_apart=True)[0]


@pytest.mark.parametrize("name", ["taso", "lora"])
def test_the_cosine_head_learns_pairs_and_its_adapter_reloads_exactly(tiny_model, tmp_path, name):
    from taso.heads import PairCosine, head_of
    from taso.importance import score_importance
    from taso.masks import derive_mask
    from taso.methods import MethodConfig, build

    # A bi-encoder reads pooled sentence vectors: the tiny BERT's random pooler would make every
    # pair look alike, so the model declares mean pooling, as sentence-transformers models do.
    st = str(sentence_transformers_folder(tiny_model, tmp_path / "st", "pooling_mode_mean_tokens", True))
    tok = pretrained.load_tokenizer(st)
    feats = data.encode(pair_rows(), tok, 32, pairs_apart=True)
    model = pretrained.load_model(st, "regression", head="cosine")
    assert isinstance(model, PairCosine) and head_of(model) == "cosine"
    # The same target modules as the stock classifier: masks and importance maps carry over.
    stock = pretrained.load_model(str(tiny_model), "regression")
    assert set(find_targets(model)) == set(find_targets(stock))
    method = build(name, MethodConfig())
    mask = None
    if method.needs:
        mask = derive_mask(score_importance(model, data.iterate(feats[:16], 8, tok.pad_token_id)), "global", 0.25)
    model = method.prepare(model, mask)
    train(model, feats, TrainConfig(lr=3e-3, epochs=2, batch_size=8), method=method, progress=False)
    model.eval()
    batch = data.collate(feats, tok.pad_token_id)
    gold = batch.pop("labels").tolist()
    with torch.no_grad():
        want = model(**batch).logits
    assert metrics.pearson(want.squeeze(-1).tolist(), gold) > 0.9
    assert min(gold) < want.mean().item() < max(gold)  # on the labels' scale (standardised, it would sit near 0)
    extra = {"head": "cosine", "pooling": "mean+normalize"}
    method.export(model, tmp_path / "a", base_model=st, task_type="SEQ_CLS", extra=extra)
    loaded = pretrained.load_with_adapter(st, tmp_path / "a", "regression").eval()
    with torch.no_grad():  # the tiny model's cosines sit close together, so the fitted scale is large and
        # magnifies fp32 rounding in the exported factors: relative 1e-4 of the output
        torch.testing.assert_close(loaded(**batch).logits, want, atol=1e-4, rtol=1e-4)


def test_a_cosine_head_classifies_pairs_from_its_warm_start_on_and_reloads_exactly(tiny_model, tmp_path):
    from taso.heads import PairCosine, warm_start_cosine
    from taso.methods import MethodConfig, build

    st = str(sentence_transformers_folder(tiny_model, tmp_path / "st", "pooling_mode_mean_tokens", True))
    tok = pretrained.load_tokenizer(st)
    rows = [{**r, "label": int(r["label"] == 5.0)} for r in pair_rows()]  # class 1: the two texts agree
    feats = data.encode(rows, tok, 32, pairs_apart=True)
    model = pretrained.load_model(st, "classification", num_labels=2, head="cosine")
    assert isinstance(model, PairCosine) and model.classifier.out_features == 2
    batch = data.collate(feats, tok.pad_token_id)
    gold = batch.pop("labels")

    def accuracy(m) -> float:  # without dropout, leaving the mode as it was
        was = m.training
        m.eval()
        with torch.no_grad():
            right = (m(**batch).logits.argmax(-1) == gold).float().mean().item()
        m.train(was)
        return right

    assert accuracy(model) == 0.75  # undecided head: every class alike, argmax says 0, the majority
    # The warm start alone reads the untrained cosine: identical texts pool to cosine 1, the rest lower.
    (w0, _), (w1, _) = warm_start_cosine(model, data.iterate(feats, 8, tok.pad_token_id), gold.tolist())
    assert w1 > w0 and accuracy(model) == 1.0
    from taso.importance import score_importance
    from taso.masks import derive_mask

    method = build("taso", MethodConfig())
    importance = score_importance(model, data.iterate(feats[:16], 8, tok.pad_token_id))
    model = method.prepare(model, derive_mask(importance, "global", 0.25))
    train(model, feats, TrainConfig(lr=3e-3, epochs=2, batch_size=8), method=method, progress=False)
    model.eval()
    assert accuracy(model) == 1.0
    with torch.no_grad():
        want = model(**batch).logits
    method.export(
        model, tmp_path / "a", base_model=st, task_type="SEQ_CLS", extra={"head": "cosine", "pooling": "mean+normalize"}
    )
    loaded = pretrained.load_with_adapter(st, tmp_path / "a", "classification").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, want, atol=1e-4, rtol=1e-4)


def test_cosine_class_logits_pick_each_examples_class_and_keep_an_absent_class_finite():
    from taso.heads import cosine_class_logits

    cos, labels = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1]
    fitted = cosine_class_logits(cos, labels, 3)  # class 2 never seen: it wins at no observed cosine
    logit = lambda c: [w * c + b for w, b in fitted]  # noqa: E731
    assert all(max(range(3), key=lambda k: logit(c)[k]) == y for c, y in zip(cos, labels))
    assert all(math.isfinite(w) and math.isfinite(b) for w, b in fitted)


def test_the_cosine_head_needs_a_sentence_pair_task(tiny_model):
    with pytest.raises(ValueError, match="needs task_type regression or classification"):
        pretrained.load_model(str(tiny_model), "causal_lm", head="cosine")


def _without(src: Path, dest: Path, drop: str) -> Path:
    """A copy of the saved model ``src`` whose weights lack every tensor whose name contains ``drop``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    weights = load_file(dest / "model.safetensors")
    gone = [k for k in weights if drop in k]
    assert gone, f"no weight named like {drop!r}"
    save_file(
        {k: v for k, v in weights.items() if k not in gone}, dest / "model.safetensors", metadata={"format": "pt"}
    )
    return dest


def test_a_checkpoint_missing_a_backbone_weight_is_refused_by_name(tiny_model, tmp_path):
    from taso.io import ArtifactError

    broken = _without(tiny_model, tmp_path / "broken", "layer.1.attention.self.query.weight")
    with pytest.raises(
        ArtifactError, match=r"1 pretrained weight\(s\) missing .*layer\.1\.attention\.self\.query\.weight"
    ):
        pretrained.load_model(str(broken))
    # The new head may come up missing or resized (another task's fine-tune as the base): no error.
    headless = _without(tiny_model, tmp_path / "headless", "classifier.")
    assert pretrained.load_model(str(headless), num_labels=5).classifier.out_features == 5


def test_a_missing_pooler_matters_only_to_the_head_that_reads_it(tiny_model, tmp_path):
    from taso.io import ArtifactError

    no_pooler = _without(tiny_model, tmp_path / "no-pooler", "pooler.")
    with pytest.raises(ArtifactError, match=r"pooler\.dense"):
        pretrained.load_model(str(no_pooler), pooling="architecture")
    assert pretrained.load_model(str(no_pooler), pooling="mean") is not None


@pytest.mark.parametrize("kind", ["distilbert", "deberta-v2"])
def test_a_base_checkpoint_of_another_encoder_loads_with_its_new_head(tmp_path, kind):
    # Their sequence heads hold more than `classifier` (DistilBERT's pre_classifier, DeBERTa's
    # pooler), all outside the base model: new, so not a damaged checkpoint.
    from transformers import AutoConfig, AutoModel

    from taso.io import ArtifactError

    cfg = AutoConfig.for_model(
        kind, vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64,
    )  # fmt: skip
    folder = tmp_path / kind
    AutoModel.from_config(cfg).save_pretrained(folder)
    model = pretrained.load_model(str(folder), num_labels=3, pooling="architecture")
    assert model.config.num_labels == 3
    broken = _without(folder, tmp_path / f"{kind}-broken", "layer.0.")
    with pytest.raises(ArtifactError, match=r"pretrained weight\(s\) missing"):
        pretrained.load_model(str(broken), num_labels=3, pooling="architecture")
