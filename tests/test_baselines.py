"""Baselines share TASO's training API: what each leaves trainable, and that train() runs them."""

import torch

from taso.baselines import full_finetune, head_only, peft_lora
from taso.model import count_trainable
from taso.targets import find_targets
from taso.train import TrainConfig, train


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_peft_lora_rank_r_on_every_target_plus_head(make_model, make_features):
    model = make_model("bert")
    targets = find_targets(model)
    expected = sum(2 * (m.in_features + m.out_features) for m in targets.values())
    lora = peft_lora(model, r=2, alpha=4.0)
    names = trainable_names(lora)
    lora_params = sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad and "lora_" in n)
    assert lora_params == expected
    assert any("classifier" in n for n in names)
    before = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_B" in n}
    result = train(lora, make_features("bert"), TrainConfig(lr=1e-2, max_steps=3, batch_size=8), progress=False)
    assert result.steps == 3
    assert any(not torch.equal(before[n], p) for n, p in lora.named_parameters() if "lora_B" in n)


def test_head_only_and_full_finetune(make_model, make_features):
    model = head_only(make_model("bert"))
    assert trainable_names(model) == {"classifier.weight", "classifier.bias"}
    head = model.config.hidden_size * model.config.num_labels + model.config.num_labels
    assert count_trainable(model) == {"adapter": 0, "head": head, "total": head}
    train(model, make_features("bert"), TrainConfig(max_steps=2, batch_size=8), progress=False)
    full = full_finetune(make_model("bert"))
    assert trainable_names(full) == {n for n, _ in full.named_parameters()}
