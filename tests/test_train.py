"""Training: sparsity-scaled rates, determinism, exact resume after interruption, non-finite losses."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from taso.importance import default_loss, score_importance
from taso.injection import inject, masked_layers
from taso.lr import effective_rates
from taso.masks import derive_rows_cols
from taso.methods import HeadOnly, Taso
from taso.targets import head_names
from taso.train import NonFiniteLossError, TrainConfig, TrainingInterrupted, total_steps, train, trainable_state


def masked_model(make_model, make_batches, kind="bert", *, p=0.25, dropout=0.0, lora_dropout=0.0, seed=0):
    model = make_model(kind, dropout=dropout) if kind == "bert" else make_model(kind)
    mask = derive_rows_cols(score_importance(model, make_batches(kind)), p)
    inject(model, mask, r=2, alpha=4.0, dropout=lora_dropout, seed=seed)
    return model, mask


class Interrupt(Exception):
    pass


def interrupt_at(call: int):
    """A loss function that raises on its ``call``-th call (0-based), i.e. while computing that step."""
    calls = []

    def loss_fn(model, batch):
        if len(calls) == call:
            raise Interrupt(f"killed at call {call}")
        calls.append(1)
        return default_loss(model, batch)

    return loss_fn


# --- learning rates -----------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_param_groups_scale_by_inverse_kept_fraction(gamma, make_model, make_batches):
    model, mask = masked_model(make_model, make_batches, p=0.2)
    groups = Taso().param_groups(model, 1e-3, gamma=gamma)
    by_name = {g["name"]: g for g in groups}
    layers = masked_layers(model)
    assert set(by_name) == set(layers) | {"head"}
    for name, layer in layers.items():
        m = mask.modules[name]
        rho = (len(m.rows) + len(m.cols)) / (m.shape[0] + m.shape[1])
        assert by_name[name]["rho"] == pytest.approx(rho)
        assert by_name[name]["lr"] == pytest.approx(1e-3 * (1 / rho) ** gamma)
        assert {id(p) for p in by_name[name]["params"]} == {id(layer.lora_A), id(layer.lora_B)}
    assert by_name["head"]["lr"] == 1e-3
    if gamma == 0:
        assert {g["lr"] for g in groups} == {1e-3}
    else:
        assert all(by_name[n]["lr"] > 1e-3 for n in layers)
    # Every trainable parameter is in exactly one group; frozen ones in none.
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    rates = effective_rates(groups)
    assert rates["head"] == {"rho": 1.0, "lr": 1e-3}


def test_param_groups_head_lr_other_and_errors(make_model, make_batches):
    model, _ = masked_model(make_model, make_batches)
    groups = Taso().param_groups(model, 1e-3, gamma=0.5, head_lr=5e-2, weight_decay=0.1)
    head = next(g for g in groups if g["name"] == "head")
    assert head["lr"] == 5e-2
    assert {id(p) for p in head["params"]} == {id(p) for h in head_names(model) for p in getattr(model, h).parameters()}
    assert all(g["weight_decay"] == 0.1 for g in groups)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    other = next(g for g in Taso().param_groups(model, 1e-3) if g["name"] == "other")
    assert [id(p) for p in other["params"]] == [id(model.bert.embeddings.word_embeddings.weight)]
    with pytest.raises(ValueError, match="learning rate"):
        Taso().param_groups(model, 0.0)
    with pytest.raises(ValueError, match="no trainable"):
        Taso().param_groups(make_model("bert").requires_grad_(False), 1e-3)


def test_optimizer_uses_the_scaled_rates(make_model, make_batches, make_features):
    model, _ = masked_model(make_model, make_batches, p=0.2)
    cfg = TrainConfig(lr=1e-3, gamma=1.0, max_steps=2, batch_size=8)
    result = train(model, make_features("bert", 16), cfg, method=Taso(), progress=False)
    expected = {g["name"]: g["lr"] for g in Taso().param_groups(model, 1e-3, gamma=1.0, head_lr=cfg.head_lr)}
    assert {n: r["lr"] for n, r in result.rates.items()} == pytest.approx(expected)


# --- the loop -----------------------------------------------------------------------------------


def test_total_steps():
    assert total_steps(100, TrainConfig(batch_size=16, epochs=2)) == 14
    assert total_steps(100, TrainConfig(batch_size=16, epochs=2, max_steps=5)) == 5
    assert total_steps(10, TrainConfig(batch_size=16, epochs=1, max_steps=50)) == 1


def test_trains_only_trainable_parameters(make_model, make_batches, make_features):
    model, _ = masked_model(make_model, make_batches)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = trainable_state(model)
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=8, log_every=1, warmup_ratio=0.25)
    result = train(model, make_features("bert", 20), cfg, progress=False)
    assert result.steps == total_steps(20, cfg) == 6 and result.resumed_from == 0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, start[n]) for n, p in trainable_state(model).items())
    # Linear warm-up for ceil(0.25·6) = 2 steps, then linear decay to zero at the last step.
    assert [h["step"] for h in result.history] == list(range(1, 7))
    lrs = [h["lr"] for h in result.history]
    assert lrs[-1] == 0.0 and lrs[1] == max(lrs) and all(a > b for a, b in zip(lrs[1:], lrs[2:]))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_same_seed_same_weights_other_seed_other_weights(make_model, make_batches, make_features):
    feats = make_features("llama_cls", 24)

    def run(seed):
        model, _ = masked_model(make_model, make_batches, "llama_cls")
        train(model, feats, TrainConfig(lr=1e-2, max_steps=5, batch_size=4, seed=seed), progress=False)
        return trainable_state(model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


# --- resume -------------------------------------------------------------------------------------

# Dropout in the model and in the adapter makes every step consume random numbers, so an exact
# match after resume needs the RNG state, the optimizer, the schedule and the batch order.
RESUME_CFG = TrainConfig(lr=1e-2, epochs=3, batch_size=8, checkpoint_every=4, warmup_ratio=0.2, log_every=1, seed=3)


def _fresh(make_model, make_batches):
    model, _ = masked_model(make_model, make_batches, dropout=0.1, lora_dropout=0.2)
    return model


def _reference(make_model, make_batches, feats):
    model = _fresh(make_model, make_batches)
    result = train(model, feats, RESUME_CFG, progress=False)
    assert result.steps == 9  # 3 epochs × 3 batches: resume crosses an epoch boundary
    return trainable_state(model), result


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, make_model, make_batches, make_features):
    feats = make_features("bert", 24)
    want, ref = _reference(make_model, make_batches, feats)
    ckpt = tmp_path / "ckpt.pt"

    crashed = _fresh(make_model, make_batches)
    with pytest.raises(Interrupt):
        train(crashed, feats, RESUME_CFG, checkpoint=ckpt, loss_fn=interrupt_at(6), progress=False)
    assert torch.load(ckpt, weights_only=True)["step"] == 4  # the last checkpoint before the crash

    resumed = _fresh(make_model, make_batches)
    result = train(resumed, feats, RESUME_CFG, checkpoint=ckpt, progress=False)
    assert result.resumed_from == 4 and result.steps == 9
    got = trainable_state(resumed)
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    assert result.history == ref.history


def test_resume_after_a_signal_equals_an_uninterrupted_run(tmp_path, make_model, make_batches, make_features):
    feats = make_features("bert", 24)
    want, _ = _reference(make_model, make_batches, feats)
    ckpt = tmp_path / "ckpt.pt"
    calls = []

    def send_sigint(model, batch):
        calls.append(1)
        if len(calls) == 6:  # while computing step 6: it finishes, then the loop stops
            os.kill(os.getpid(), signal.SIGINT)
        return default_loss(model, batch)

    previous = signal.getsignal(signal.SIGINT)
    interrupted = _fresh(make_model, make_batches)
    with pytest.raises(TrainingInterrupted, match="after step 6"):
        train(interrupted, feats, RESUME_CFG, checkpoint=ckpt, loss_fn=send_sigint, progress=False)
    assert signal.getsignal(signal.SIGINT) is previous  # the handler is put back
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6  # off the checkpoint_every grid: written because of the signal
    assert all(torch.equal(state["trainable"][n], t) for n, t in trainable_state(interrupted).items())

    resumed = _fresh(make_model, make_batches)
    result = train(resumed, feats, RESUME_CFG, checkpoint=ckpt, progress=False)
    assert result.resumed_from == 6
    got = trainable_state(resumed)
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_checkpoint_of_another_mask_is_refused(tmp_path, make_model, make_batches, make_features):
    feats = make_features("bert", 16)
    ckpt = tmp_path / "ckpt.pt"
    model, _ = masked_model(make_model, make_batches, p=0.25)
    train(model, feats, TrainConfig(max_steps=2, batch_size=8, checkpoint_every=1), checkpoint=ckpt, progress=False)
    other, _ = masked_model(make_model, make_batches, p=0.5)
    with pytest.raises(ValueError, match="another mask"):
        train(other, feats, TrainConfig(max_steps=4, batch_size=8), checkpoint=ckpt, progress=False)


# --- non-finite losses --------------------------------------------------------------------------


def test_nan_loss_names_the_step_and_applies_nothing(tmp_path, make_model, make_batches, make_features):
    model, _ = masked_model(make_model, make_batches)
    ckpt = tmp_path / "ckpt.pt"
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = default_loss(m, batch)
        return loss * float("nan") if len(calls) == 4 else loss

    cfg = TrainConfig(lr=1e-2, max_steps=8, batch_size=4, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match="step 3") as e:
        train(model, make_features("bert", 32), cfg, checkpoint=ckpt, loss_fn=loss_fn, progress=False)
    assert str(ckpt) in str(e.value)
    assert isinstance(e.value, FloatingPointError)
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3
    # Nothing of the bad step reached the weights.
    assert all(torch.equal(state["trainable"][n], t) for n, t in trainable_state(model).items())
    assert all(torch.isfinite(t).all() for t in trainable_state(model).values())


def test_inf_loss_without_checkpoint(make_model, make_batches, make_features):
    model, _ = masked_model(make_model, make_batches)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train(
            model,
            make_features("bert", 8),
            TrainConfig(max_steps=2, batch_size=4),
            loss_fn=lambda m, b: default_loss(m, b) * float("inf"),
            progress=False,
        )


def test_head_only_baseline_trains_the_head(make_model, make_features):
    model = HeadOnly().prepare(make_model("llama_cls"))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"score"}
    start = trainable_state(model)
    train(model, make_features("llama_cls", 16), TrainConfig(lr=1e-2, max_steps=2, batch_size=8), progress=False)
    assert not torch.equal(trainable_state(model)["score.weight"], start["score.weight"])
    with pytest.raises(ValueError, match="no task head"):
        HeadOnly().prepare(make_model("llama_lm"))


def test_bf16_runs_the_forward_under_autocast_and_keeps_fp32_state(make_model, make_batches, make_features):
    model = make_model("bert")
    inject(model, derive_rows_cols(score_importance(model, make_batches("bert")), 0.5), r=1, alpha=2.0)
    seen = []

    def loss_fn(m, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return default_loss(m, batch)

    before = {k: v.clone() for k, v in trainable_state(model).items()}
    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=4, bf16=True)
    train(model, make_features("bert", 16), cfg, loss_fn=loss_fn, progress=False)
    assert seen == [True, True, True]
    after = trainable_state(model)
    assert all(t.dtype == torch.float32 for t in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["lora", "full", "losia"])
def test_head_lr_reaches_the_head_of_every_method_peft_wrapped_too(name, make_model):
    """PEFT wraps the model (its head under base_model.model, as modules_to_save): train.head_lr must
    still find it. Before, a PEFT LoRA's head silently trained at the adapter's rate."""
    from taso.methods import MethodConfig, build

    method = build(name, MethodConfig(rank=2, alpha=4.0))
    model = method.prepare(make_model("bert"), None)
    groups = method.param_groups(model, 1e-3, head_lr=5e-2)
    head = next(g for g in groups if g["name"] == "head")
    assert head["lr"] == 5e-2 and head["params"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("classifier" in names[id(p)] for p in head["params"])
    assert not any("classifier" in names[id(p)] for g in groups if g["name"] != "head" for p in g["params"])
