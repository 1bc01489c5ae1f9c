"""Export to a standard PEFT adapter: `PeftModel.from_pretrained` on a fresh base gives the same model."""

from __future__ import annotations

import json

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from taso.importance import score_importance
from taso.injection import inject, masked_layers, merge
from taso.masks import Mask, ModuleMask, derive_rows_cols
from taso.methods import Taso
from taso.targets import find_targets, head_names
from taso.train import TrainConfig, train, trainable_state

PEFT_TASK = {"bert": "SEQ_CLS", "llama_cls": "SEQ_CLS", "llama_lm": "CAUSAL_LM"}


def trained_masked(kind, load, make_batches, make_features, *, r=2, alpha=4.0, p=0.3):
    """A model from ``load()`` with a masked adapter trained a few steps (so it is not zero), and its mask."""
    model = load()
    mask = derive_rows_cols(score_importance(model, make_batches(kind)), p)
    inject(model, mask, r=r, alpha=alpha)
    train(model, make_features(kind, 24), TrainConfig(lr=2e-2, max_steps=6, batch_size=4), progress=False)
    return model.eval(), mask


def load_adapter(folder, fresh):
    from peft import PeftModel

    return PeftModel.from_pretrained(fresh, str(folder)).eval()


def test_peft_loads_the_same_model(kind, tmp_path, saved_base, make_batches, make_features, get_logits):
    base_dir, load = saved_base(kind)
    model, mask = trained_masked(kind, load, make_batches, make_features)
    before = trainable_state(model)
    out = Taso().export(
        model, tmp_path / "adapter", base_model=str(base_dir), task_type=PEFT_TASK[kind], extra={"mask": mask.digest}
    )
    assert out == tmp_path / "adapter"
    # Export leaves the in-memory model as it was.
    assert masked_layers(model) and all(torch.equal(v, trainable_state(model)[k]) for k, v in before.items())

    fresh = load()
    batch = make_batches(kind, n_batches=1, batch_size=6, seed=9)[0]
    base_logits = get_logits(fresh, batch)
    peft_model = load_adapter(out, fresh)
    ours, theirs = get_logits(model, batch), get_logits(peft_model, batch)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert not torch.allclose(ours, base_logits, atol=1e-4), "the adapter is still zero: the test would prove nothing"

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir)
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4.0 and cfg["peft_type"] == "LORA"
    adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == set(masked_layers(model))
    assert cfg["task_type"] == PEFT_TASK[kind]
    assert set(head_names(model)) <= set(cfg["modules_to_save"] or [])
    assert json.loads((out / "taso.json").read_text()) == {"mask": mask.digest}


def test_exported_factors_are_zero_outside_the_mask(kind, tmp_path, saved_base, make_batches, make_features):
    _, load = saved_base(kind)
    model, mask = trained_masked(kind, load, make_batches, make_features)
    Taso().export(model, tmp_path / "adapter", base_model="tiny", task_type=PEFT_TASK[kind])
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    for name, layer in masked_layers(model).items():
        A = tensors[f"base_model.model.{name}.lora_A.weight"]
        B = tensors[f"base_model.model.{name}.lora_B.weight"]
        assert A.shape == (2, layer.in_features) and B.shape == (layer.out_features, 2)
        m = mask.modules[name]
        other_cols = sorted(set(range(layer.in_features)) - set(m.cols.tolist()))
        other_rows = sorted(set(range(layer.out_features)) - set(m.rows.tolist()))
        assert torch.all(A[:, other_cols] == 0) and torch.all(B[other_rows] == 0)
        assert torch.equal(A[:, m.cols.long()], layer.lora_A.detach())
        assert torch.equal(B[m.rows.long()], layer.lora_B.detach())
        assert B.abs().sum() > 0
    head_keys = {k for k in tensors if ".lora_" not in k}
    assert bool(head_keys) == bool(head_names(model))


def test_peft_merge_equals_our_merge(tmp_path, saved_base, make_batches, make_features, get_logits):
    base_dir, load = saved_base("bert")
    model, _ = trained_masked("bert", load, make_batches, make_features)
    Taso().export(model, tmp_path / "adapter", base_model=str(base_dir), task_type="SEQ_CLS")
    peft_merged = load_adapter(tmp_path / "adapter", load()).merge_and_unload()
    batch = make_batches("bert", n_batches=1, seed=5)[0]
    unmerged = get_logits(model, batch)
    merge(model)
    torch.testing.assert_close(get_logits(model, batch), unmerged, rtol=0, atol=1e-5)
    for name, layer in masked_layers(model).items():
        torch.testing.assert_close(peft_merged.get_submodule(name).weight, layer.base.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(get_logits(peft_merged, batch), unmerged, rtol=0, atol=1e-5)


def test_export_replaces_an_existing_adapter(tmp_path, saved_base, make_batches, make_features, get_logits):
    base_dir, load = saved_base("bert")
    model, _ = trained_masked("bert", load, make_batches, make_features)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "stale.txt").write_text("from an older run")
    Taso().export(model, tmp_path / "adapter", base_model=str(base_dir), task_type="SEQ_CLS")
    assert not (tmp_path / "adapter" / "stale.txt").exists()
    train(model, make_features("bert", 24, seed=7), TrainConfig(lr=2e-2, max_steps=3, batch_size=4), progress=False)
    model.eval()
    Taso().export(model, tmp_path / "adapter", base_model=str(base_dir), task_type="SEQ_CLS")
    batch = make_batches("bert", n_batches=1, seed=5)[0]
    torch.testing.assert_close(
        get_logits(load_adapter(tmp_path / "adapter", load()), batch), get_logits(model, batch), rtol=0, atol=1e-5
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_many_targets_some_empty(tmp_path, saved_base, make_batches, make_features, get_logits):
    """Over 20 target layers (PEFT then shortens the target list to suffixes) and a mask that skips some."""
    base_dir, load = saved_base("llama_cls", layers=4)
    model = load()
    names = list(find_targets(model))
    assert len(names) > 20
    full = derive_rows_cols(score_importance(model, make_batches("llama_cls")), 0.3)
    skipped = set(names[1::3])  # every third layer, across kinds of projections
    mask = Mask({n: ModuleMask([], [], m.shape) if n in skipped else m for n, m in full.modules.items()})
    inject(model, mask, r=1)
    assert set(masked_layers(model)) == set(names) - skipped
    train(model, make_features("llama_cls", 16), TrainConfig(lr=2e-2, max_steps=4, batch_size=4), progress=False)
    model.eval()
    Taso().export(model, tmp_path / "adapter", base_model=str(base_dir), task_type="SEQ_CLS")
    peft_model = load_adapter(tmp_path / "adapter", load())
    adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == set(names) - skipped
    batch = make_batches("llama_cls", n_batches=1, seed=5)[0]
    torch.testing.assert_close(get_logits(peft_model, batch), get_logits(model, batch), rtol=0, atol=1e-5)


def test_export_needs_masked_layers(tmp_path, make_model):
    with pytest.raises(ValueError, match="no masked LoRA layer"):
        Taso().export(make_model("bert"), tmp_path / "adapter", base_model="tiny", task_type="SEQ_CLS")
    assert not (tmp_path / "adapter").exists()


def test_wrapping_exporting_and_loading_an_adapter_prints_no_warning(tiny_model, tmp_path):
    # Outside pytest's own warning capture: what a stage prints. PEFT's read of a deprecated
    # transformers property, and its hub lookup at save time, each used to warn on every stage.
    import subprocess
    import sys

    script = f"""
from taso import pretrained
from taso.methods import MethodConfig, build
model = build("lora", MethodConfig()).prepare(pretrained.load_model({str(tiny_model)!r}, num_labels=2))
build("lora", MethodConfig()).export(model, {str(tmp_path / "a")!r}, base_model="org/some-hub-id", task_type="SEQ_CLS")
pretrained.load_with_adapter({str(tiny_model)!r}, {str(tmp_path / "a")!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "Warning" not in proc.stderr, proc.stderr
