"""Importance scoring: equal to a brute-force per-weight reference, and leaves the model as it found it."""

from __future__ import annotations

import math

import pytest
import torch

from taso.importance import Importance, default_loss, score_importance, warm_up_head
from taso.io import ArtifactError
from taso.targets import find_targets, head_names


def brute_force(model, batches, names):
    """Σ_batches |W ⊙ ∂L/∂W| with plain autograd: every parameter requires grad, one backward per batch."""
    model.eval()
    weights = {n: model.get_submodule(n).weight for n in names}
    total = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    flags = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(True)
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for n, w in weights.items():
                total[n] += (w.detach().float() * w.grad.float()).abs()
    finally:
        model.zero_grad(set_to_none=True)
        for p, f in flags.items():
            p.requires_grad_(f)
    return total


def assert_close_rel(actual, expected):
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * max(scale, 1e-12))


def test_equals_brute_force_reference(kind, make_model, make_batches):
    model = make_model(kind)
    batches = make_batches(kind, n_batches=3)
    imp = score_importance(model, batches, keep_full=True)
    names = list(find_targets(model))
    assert list(imp.rows) == names and set(imp.full) == set(names)
    ref = brute_force(model, batches, names)
    for n in names:
        w = model.get_submodule(n).weight
        assert imp.rows[n].shape == (w.shape[0],) and imp.cols[n].shape == (w.shape[1],)
        assert imp.rows[n].dtype == imp.cols[n].dtype == imp.full[n].dtype == torch.float32
        assert_close_rel(imp.full[n], ref[n])
        assert_close_rel(imp.rows[n], ref[n].sum(1))
        assert_close_rel(imp.cols[n], ref[n].sum(0))
    # The sum over batches really is a sum: not just the last batch.
    last_only = brute_force(model, batches[-1:], names[:1])[names[0]]
    assert not torch.allclose(imp.full[names[0]], last_only)
    assert imp.meta["n_batches"] == "3"


def test_never_scores_embeddings_or_head(kind, make_model, make_batches):
    model = make_model(kind)
    imp = score_importance(model, make_batches(kind, n_batches=1))
    for name in imp.rows:
        assert "embed" not in name and "lm_head" not in name
        assert name.split(".")[0] not in head_names(model)


def test_marginals_without_full_maps_match_keep_full(make_model, make_batches):
    model, batches = make_model("bert"), make_batches("bert")
    plain = score_importance(model, batches)
    assert plain.full is None
    with_full = score_importance(model, batches, keep_full=True)
    for n in plain.rows:
        assert torch.equal(plain.rows[n], with_full.rows[n])
        assert torch.equal(plain.cols[n], with_full.cols[n])


def test_keep_full_for_chosen_modules_and_suffix_targets(make_model, make_batches):
    model, batches = make_model("bert"), make_batches("bert")
    imp = score_importance(model, batches, ["query", "value"], keep_full=["bert.encoder.layer.1.attention.self.query"])
    assert set(imp.rows) == {f"bert.encoder.layer.{i}.attention.self.{k}" for i in (0, 1) for k in ("query", "value")}
    assert list(imp.full) == ["bert.encoder.layer.1.attention.self.query"]
    ref = brute_force(model, batches, list(imp.full))
    assert_close_rel(
        imp.full["bert.encoder.layer.1.attention.self.query"], ref["bert.encoder.layer.1.attention.self.query"]
    )


def _snapshot(model):
    return (
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


def _freeze_pattern(model):
    """A non-trivial requires_grad pattern: embeddings frozen, everything else trainable."""
    for n, p in model.named_parameters():
        p.requires_grad_("embed" not in n)


@pytest.mark.parametrize("training", [True, False])
def test_restores_flags_and_mode(training, make_model, make_batches):
    model = make_model("bert")
    _freeze_pattern(model)
    model.train(training)
    before = _snapshot(model)
    score_importance(model, make_batches("bert"))
    assert _snapshot(model) == before
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_and_restores(bad, make_model, make_batches):
    model = make_model("llama_cls")
    _freeze_pattern(model)
    model.train()
    before = _snapshot(model)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = default_loss(m, batch)
        return loss * bad if len(calls) == 2 else loss

    with pytest.raises(FloatingPointError, match="batch 1"):
        score_importance(model, make_batches("llama_cls"), loss_fn=loss_fn)
    assert _snapshot(model) == before
    assert all(p.grad is None for p in model.parameters())
    # The gradient hooks are gone: a plain backward keeps its .grad instead of having it folded away.
    target = next(iter(find_targets(model).values())).weight
    default_loss(model, make_batches("llama_cls")[0]).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def test_scoring_does_not_change_weights(make_model, make_batches):
    model = make_model("bert")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    score_importance(model, make_batches("bert"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_no_batches_is_an_error(make_model):
    with pytest.raises(ValueError, match="empty"):
        score_importance(make_model("bert"), [])


def test_unknown_targets_name_the_spec(make_model, make_batches):
    with pytest.raises(ValueError, match="nonexistent"):
        score_importance(make_model("bert"), make_batches("bert"), ["nonexistent"])


def test_save_load_roundtrip_and_tamper(tmp_path, make_model, make_batches):
    imp = score_importance(make_model("bert"), make_batches("bert"), keep_full=True)
    imp.meta["task"] = "demo"
    digest = imp.save(tmp_path / "importance.safetensors")
    loaded = Importance.load(tmp_path / "importance.safetensors")
    assert digest == imp.digest == loaded.digest
    assert loaded.meta == imp.meta
    for part in ("rows", "cols", "full"):
        got, want = getattr(loaded, part), getattr(imp, part)
        assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)

    # Same tensors, recorded digest of something else: refused.
    from safetensors.torch import save_file

    tensors = imp._tensors()
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"digest": digest})
    with pytest.raises(ArtifactError, match="digest"):
        Importance.load(tmp_path / "bad.safetensors")
    with pytest.raises(ArtifactError, match="not found"):
        Importance.load(tmp_path / "missing.safetensors")


def test_warm_up_head_trains_only_the_head(make_model, make_batches):
    model = make_model("bert")
    _freeze_pattern(model)
    before = _snapshot(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = make_batches("bert", n_batches=3)
    assert warm_up_head(model, batches, steps=10, lr=1e-2) == 3  # runs out of batches
    assert _snapshot(model) == before
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed and all(k.startswith("classifier.") for k in changed)
    assert warm_up_head(model, batches, steps=2) == 2
    assert warm_up_head(model, batches, steps=0) == 0
    assert warm_up_head(make_model("llama_lm"), make_batches("llama_lm"), steps=3) == 0  # no head to warm up


def test_warm_up_head_non_finite_restores(make_model, make_batches):
    model = make_model("bert")
    before = _snapshot(model)
    with pytest.raises(FloatingPointError):
        warm_up_head(model, make_batches("bert"), steps=3, loss_fn=lambda m, b: default_loss(m, b) * math.nan)
    assert _snapshot(model) == before


def test_warm_up_head_is_the_same_for_the_same_seed_whatever_the_rng_before(make_model, make_batches):
    # Dropout is on while the head warms up; its draws must come from the seed, not from
    # whatever the process's RNG holds (which torch seeds differently in every process).
    def warmed(seed: int, noise: int):
        torch.manual_seed(noise)
        model = make_model("bert", dropout=0.3)
        warm_up_head(model, make_batches("bert"), steps=3, lr=1e-2, seed=seed)
        return model.classifier.weight.detach().clone(), torch.rand(1)

    (a, after_a), (b, after_b), (c, _) = warmed(0, noise=1), warmed(0, noise=2), warmed(1, noise=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(after_a, after_b)  # the caller's stream went on where it was, untouched


def test_sensitivity_statistic_is_losias_score_over_the_batches_in_order(kind, make_model, make_batches):
    from taso.subnet import Sensitivity, taylor_importance

    model = make_model(kind)
    batches = make_batches(kind, n_batches=3)
    names = list(find_targets(model))
    imp = score_importance(model, batches, keep_full=True, statistic="sensitivity", betas=(0.8, 0.7))
    # By hand: each batch's param_mix term from plain autograd, folded into Ī and Ū (METHODS.md §1).
    model.eval()
    ema = {n: Sensitivity.zeros(model.get_submodule(n).weight.shape) for n in names}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            model.requires_grad_(True)
            default_loss(model, batch).backward()
        for n in names:
            w = model.get_submodule(n).weight
            ema[n].update(taylor_importance(w.detach(), w.grad, "param_mix"), 0.8, 0.7)
    model.zero_grad(set_to_none=True)
    for n in names:
        s = ema[n].score()
        assert_close_rel(imp.full[n], s)
        assert_close_rel(imp.rows[n], s.sum(1))
        assert_close_rel(imp.cols[n], s.sum(0))
    assert imp.meta["statistic"] == "sensitivity" and imp.meta["taylor"] == "param_mix"
    # An EMA, not a sum: the same batches in another order score differently.
    reversed_ = score_importance(model, batches[::-1], statistic="sensitivity", betas=(0.8, 0.7))
    assert not torch.allclose(reversed_.rows[names[0]], imp.rows[names[0]], rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="unknown importance statistic 'fisher'"):
        score_importance(model, batches, statistic="fisher")


@pytest.mark.parametrize(
    ("kind", "suffixes"), [("bert", ("query", "key", "value")), ("llama_lm", ("q_proj", "k_proj", "v_proj"))]
)
def test_the_scorer_records_the_heads_of_q_k_and_v_only(kind, suffixes, make_model, make_batches):
    model = make_model(kind)
    imp = score_importance(model, make_batches(kind, n_batches=1))
    headed = {n for n in imp.rows if n.rsplit(".", 1)[-1] in suffixes}
    assert len(headed) == 3 * 2  # three projections in each of two layers
    assert imp.heads == dict.fromkeys(headed, 16)  # hidden 32 over 2 heads
    assert imp.meta["statistic"] == "taylor"


def test_head_widths_follow_the_config_with_grouped_query_attention_and_an_explicit_head_dim():
    """Llama with 4 query heads of width 16 over hidden 32 (head_dim set apart from hidden/heads) and
    one shared key/value head: q has 4 heads of 16 rows, k and v one of 16 each."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from taso.targets import attention_heads

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    names = list(find_targets(model))
    heads = attention_heads(model, names)
    shapes = {n: model.get_submodule(n).out_features for n in heads}
    assert {n.rsplit(".", 1)[-1]: (w, shapes[n]) for n, w in heads.items()} == {
        "q_proj": (16, 64),
        "k_proj": (16, 16),
        "v_proj": (16, 16),
    }
