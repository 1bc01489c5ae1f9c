"""The masked LoRA layer and its injection: the update lives on kept rows × kept columns, always."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taso.importance import score_importance
from taso.injection import inject, masked_layers, merge, remove, unmerge
from taso.io import ArtifactError
from taso.layer import MaskedLoraLinear
from taso.masks import Mask, ModuleMask, derive_rows_cols
from taso.methods import Taso
from taso.targets import find_targets, head_names
from taso.train import TrainConfig, load_trainable_state, train, trainable_state


def make_layer(d_out=10, d_in=7, rows=(1, 4, 8), cols=(0, 3), r=2, alpha=3.0, seed=0) -> MaskedLoraLinear:
    torch.manual_seed(seed)
    layer = MaskedLoraLinear(nn.Linear(d_in, d_out), torch.tensor(rows), torch.tensor(cols), r=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_B.normal_()  # a non-zero update, as after training
    return layer


def outside(t: torch.Tensor, rows, cols) -> torch.Tensor:
    """The entries of ``t`` outside rows × cols."""
    keep = torch.zeros_like(t, dtype=torch.bool)
    keep[torch.as_tensor(rows).long().unsqueeze(1), torch.as_tensor(cols).long()] = True
    return t[~keep]


# --- the layer ----------------------------------------------------------------------------------


def test_starts_as_the_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(7, 10)
    layer = MaskedLoraLinear(base, torch.tensor([2, 5]), torch.tensor([1]), r=3)
    x = torch.randn(4, 5, 7)
    assert torch.equal(layer(x), base(x))
    assert torch.equal(layer.delta_weight(), torch.zeros(10, 7))
    assert layer.lora_A.shape == (3, 1) and layer.lora_B.shape == (2, 3)
    assert layer.lora_A.abs().sum() > 0  # A is initialised, B is zero: ΔW = 0 but gradients flow to B
    assert (layer.in_features, layer.out_features) == (7, 10)


def test_forward_equals_dense_update_and_delta_lives_on_the_block():
    layer = make_layer()
    x = torch.randn(3, 4, 7)
    dw = layer.delta_weight()
    torch.testing.assert_close(layer(x), layer.base(x) + x @ dw.T, rtol=1e-5, atol=1e-6)
    assert torch.equal(outside(dw, layer.rows, layer.cols), torch.zeros_like(outside(dw, layer.rows, layer.cols)))
    block = dw[layer.rows.unsqueeze(1), layer.cols]
    torch.testing.assert_close(block, layer.scaling * layer.lora_B @ layer.lora_A)
    assert layer.scaling == 3.0 / 2


def test_dense_lora_factors_are_zero_outside_and_reproduce_delta():
    layer = make_layer()
    A, B = layer.dense_lora()
    assert A.shape == (2, 7) and B.shape == (10, 2)
    assert torch.all(A[:, [c for c in range(7) if c not in (0, 3)]] == 0)
    assert torch.all(B[[r for r in range(10) if r not in (1, 4, 8)]] == 0)
    torch.testing.assert_close(layer.scaling * B @ A, layer.delta_weight())


def test_gradients_reach_only_the_sub_blocks():
    layer = make_layer()
    layer.base.requires_grad_(False)
    layer(torch.randn(5, 7)).pow(2).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert layer.base.weight.grad is None


def test_merge_then_unmerge_restores_weights_and_outputs():
    layer = make_layer()
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(6, 7)
    y = layer(x)
    layer.merge()
    assert layer.merged
    w_merged = layer.base.weight.detach().clone()
    torch.testing.assert_close(w_merged, w0 + layer.delta_weight(), rtol=0, atol=1e-6)
    assert torch.equal(outside(w_merged, layer.rows, layer.cols), outside(w0, layer.rows, layer.cols))
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.merge()  # idempotent
    assert torch.equal(layer.base.weight, w_merged)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.unmerge()  # idempotent
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)


def test_rank_must_be_positive():
    with pytest.raises(ValueError, match="rank"):
        MaskedLoraLinear(nn.Linear(3, 3), torch.tensor([0]), torch.tensor([0]), r=0)


def test_dropout_only_on_the_adapter_path():
    torch.manual_seed(0)
    layer = MaskedLoraLinear(nn.Linear(7, 10), torch.tensor([0, 1]), torch.tensor([2, 3]), dropout=0.5).train()
    x = torch.randn(4, 7)
    # B = 0: the adapter adds nothing, so dropout on its input cannot show.
    assert torch.equal(layer(x), layer.base(x))
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    assert not torch.equal(layer(x), layer(x))  # dropout draws differ
    layer.eval()
    assert torch.equal(layer(x), layer(x))


# --- injection into models ----------------------------------------------------------------------


def tiny_mask(model, batches, p=0.25):
    return derive_rows_cols(score_importance(model, batches), p)


@pytest.mark.parametrize("r", [1, 3])
def test_trainable_count_is_sum_of_rank_times_rows_plus_cols_plus_head(kind, r, make_model, make_batches):
    model = make_model(kind)
    mask = tiny_mask(model, make_batches(kind))
    inject(model, mask, r=r)
    expected_adapter = sum(r * (len(m.rows) + len(m.cols)) for m in mask.modules.values() if not m.empty)
    head = sum(p.numel() for h in head_names(model) for p in getattr(model, h).parameters())
    assert (head > 0) == (kind != "llama_lm")
    counts = Taso().count_trainable(model)
    assert counts == {"adapter": expected_adapter, "head": head, "backbone": 0, "total": expected_adapter + head}
    assert counts["adapter"] == mask.trainable_params(r)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == counts["total"]
    assert set(masked_layers(model)) == {n for n, m in mask.modules.items() if not m.empty}


def test_train_head_false_freezes_the_head(make_model, make_batches):
    model = make_model("bert")
    mask = tiny_mask(model, make_batches("bert"))
    inject(model, mask, train_head=False)
    assert Taso().count_trainable(model) == {
        "adapter": mask.trainable_params(1),
        "head": 0,
        "backbone": 0,
        "total": mask.trainable_params(1),
    }


def test_update_stays_inside_the_mask_after_training(kind, make_model, make_batches, make_features):
    model = make_model(kind)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    mask = tiny_mask(model, make_batches(kind), p=0.3)
    inject(model, mask, r=2, alpha=4.0)
    result = train(model, make_features(kind, 24), TrainConfig(lr=2e-2, max_steps=6, batch_size=4), progress=False)
    assert result.steps == 6
    layers = masked_layers(model)
    assert layers
    for name, layer in layers.items():
        m = mask.modules[name]
        assert torch.equal(layer.rows, m.rows.long()) and torch.equal(layer.cols, m.cols.long())
        dw = layer.delta_weight()
        out = outside(dw, m.rows, m.cols)
        assert torch.equal(out, torch.zeros_like(out)), name
        assert dw.abs().sum() > 0, f"{name}: training did not move the adapter"
        A, B = layer.dense_lora()
        keep_cols = torch.zeros(layer.in_features, dtype=torch.bool)
        keep_cols[m.cols.long()] = True
        keep_rows = torch.zeros(layer.out_features, dtype=torch.bool)
        keep_rows[m.rows.long()] = True
        assert torch.all(A[:, ~keep_cols] == 0) and torch.all(B[~keep_rows] == 0)
    # The base weights did not move; only the head (if any) and the adapters did.
    for n, t in model.state_dict().items():
        key = n.replace(".base.", ".")
        if ".lora_" in n:
            continue
        if key.split(".")[0] in head_names(model):
            assert not torch.equal(t, frozen[key]), f"head {key} did not train"
        else:
            assert torch.equal(t, frozen[key]), f"{key} changed"


def test_inject_is_seeded_and_leaves_the_global_rng_alone(tmp_path, make_model, make_batches):
    model = make_model("bert")
    mask = tiny_mask(model, make_batches("bert"))
    mask.save(tmp_path / "m")
    state = torch.get_rng_state()
    a = masked_layers(inject(make_model("bert"), mask, seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    # The same mask read back from its file (modules listed in another order) gives the same adapter.
    b = masked_layers(inject(make_model("bert"), Mask.load(tmp_path / "m"), seed=3))
    c = masked_layers(inject(make_model("bert"), mask, seed=4))
    assert all(torch.equal(a[n].lora_A, b[n].lora_A) for n in a)
    assert not all(torch.equal(a[n].lora_A, c[n].lora_A) for n in a)


def test_inject_refuses_misfit_masks_and_double_injection(make_model, make_batches):
    model = make_model("bert")
    mask = tiny_mask(model, make_batches("bert"))
    with pytest.raises(ArtifactError, match="not found in the model"):
        inject(make_model("llama_cls"), mask)
    inject(model, mask)
    with pytest.raises(ValueError, match="already holds a masked LoRA layer"):
        inject(model, mask)


def test_empty_modules_are_not_wrapped(make_model):
    model = make_model("bert")
    names = list(find_targets(model))
    modules = {
        n: ModuleMask([], [], (model.get_submodule(n).out_features, model.get_submodule(n).in_features)) for n in names
    }
    modules[names[2]] = ModuleMask([0, 5], [], modules[names[2]].shape)
    modules[names[4]] = ModuleMask([0, 5], [3], modules[names[4]].shape)
    inject(model, Mask(modules), r=2)
    assert list(masked_layers(model)) == [names[4]]
    assert Taso().count_trainable(model)["adapter"] == 2 * 3


def test_model_merge_unmerge_and_remove(kind, make_model, make_batches, get_logits):
    model = make_model(kind)
    batches = make_batches(kind)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    base_logits = get_logits(model, batches[0])
    inject(model, tiny_mask(model, batches), r=2)
    with torch.no_grad():
        for layer in masked_layers(model).values():
            layer.lora_B.normal_(std=0.5)
    adapted = get_logits(model, batches[0])
    assert not torch.allclose(adapted, base_logits, atol=1e-4)

    merge(model)
    torch.testing.assert_close(get_logits(model, batches[0]), adapted, rtol=1e-4, atol=1e-5)
    unmerge(model)
    torch.testing.assert_close(get_logits(model, batches[0]), adapted, rtol=1e-4, atol=1e-5)
    for n, t in model.state_dict().items():
        if ".lora_" not in n:
            torch.testing.assert_close(t, original[n.replace(".base.", ".")], rtol=0, atol=1e-6)

    merged_copy = remove(make_copy(model), merge=True)
    assert not masked_layers(merged_copy)
    assert all(type(merged_copy.get_submodule(n)) is nn.Linear for n in find_targets(merged_copy))
    torch.testing.assert_close(get_logits(merged_copy, batches[0]), adapted, rtol=1e-4, atol=1e-5)

    remove(model)
    assert not masked_layers(model)
    assert set(model.state_dict()) == set(original)
    for n, t in model.state_dict().items():
        torch.testing.assert_close(t, original[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(get_logits(model, batches[0]), base_logits, rtol=1e-4, atol=1e-5)


def make_copy(model):
    import copy

    return copy.deepcopy(model)


def test_trainable_state_roundtrip_and_mismatch(make_model, make_batches):
    model = make_model("bert")
    mask = tiny_mask(model, make_batches("bert"))
    inject(model, mask)
    state = trainable_state(model)
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    load_trainable_state(model, state)
    assert all(torch.equal(state[n], p) for n, p in model.named_parameters() if n in state)

    other = make_model("bert")
    inject(other, derive_rows_cols(score_importance(other, make_batches("bert")), 0.5))
    with pytest.raises(ValueError, match="another mask"):
        load_trainable_state(other, state)


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("block", [True, False], ids=["block-gradient", "rank-passes"])
def test_fused_autograd_matches_plain_autograd(input_grad, block, monkeypatch):
    # Both routes to the factor gradients must give the output and gradients of the composition of plain ops.
    import taso.layer

    monkeypatch.setattr(taso.layer, "block_gradient_pays", lambda *_: block)
    from taso.layer import MaskedLoraLinear

    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10).double().requires_grad_(False)
    layer = MaskedLoraLinear(base, torch.tensor([1, 4, 7]), torch.tensor([0, 5, 6, 11]), r=2, alpha=3.0).double()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 12, dtype=torch.double, requires_grad=input_grad)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        fused = layer(x)
    assert fused.grad_fn is not None and "MaskedLora" in type(fused.grad_fn).__name__
    # The block route keeps only the input's kept columns for backward; the rank passes need all of it.
    assert ((15, 12) in saved) != block and ((15, len(layer.cols)) in saved) == block
    grads = torch.autograd.grad(fused.square().sum(), [layer.lora_A, layer.lora_B] + ([x] if input_grad else []))

    plain = base(x).index_add(
        -1, layer.rows, (x.index_select(-1, layer.cols) @ layer.lora_A.T @ layer.lora_B.T) * layer.scaling
    )
    expected = torch.autograd.grad(plain.square().sum(), [layer.lora_A, layer.lora_B] + ([x] if input_grad else []))
    torch.testing.assert_close(fused, plain)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)
    from taso.layer import _MaskedLora

    def fused_fn(x_, a, b):
        return _MaskedLora.apply(x_, base.weight, base.bias, a, b, layer.rows, layer.cols, layer.scaling, block)

    inputs = (
        x.detach().clone().requires_grad_(input_grad),
        layer.lora_A.detach().clone(),
        layer.lora_B.detach().clone(),
    )
    assert torch.autograd.gradcheck(fused_fn, (inputs[0], inputs[1].requires_grad_(), inputs[2].requires_grad_()))


def test_factor_gradients_take_the_block_route_for_a_small_region_and_rank_passes_for_a_large_one():
    from taso.layer import block_gradient_pays

    # The default's typical layer: a quarter of rows and columns of 384×384 at rank 4.
    assert block_gradient_pays((384, 384), 96, 96, 4)
    # The whole matrix at rank 1: its weight gradient would cost what full fine-tuning's does.
    assert not block_gradient_pays((384, 384), 384, 384, 1)
