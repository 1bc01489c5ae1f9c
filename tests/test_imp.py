"""IMP: the kept fraction per round, magnitude pruning, the rewind to θ0, and a search that resumes."""

from __future__ import annotations

import pytest
import torch

from taso.config import ImpConfig, MethodConfig
from taso.imp import (
    full_mask,
    kept_fraction,
    kept_fractions,
    magnitudes,
    prune,
    round_trainer,
    search,
)
from taso.injection import masked_layers
from taso.masks import Mask, ModuleMask
from taso.methods.imp import Imp, initial_factors
from taso.targets import find_targets
from taso.train import TrainConfig


def test_kept_fractions_follow_the_geometric_schedule_and_end_at_p():
    assert kept_fractions(0.5, 0.25) == [0.5, 0.25]
    got = kept_fractions(0.3, 0.2)
    assert got[:4] == pytest.approx([0.7, 0.49, 0.343, 0.2401]) and got[-1] == 0.2 and len(got) == 5
    with pytest.raises(ValueError, match="imp.q must be in"):
        kept_fractions(1.0, 0.25)


def test_pruning_drops_the_smallest_magnitudes_among_what_is_kept():
    mask = Mask({"a": ModuleMask([0, 1, 2, 3], [0, 1, 2, 3, 4, 5], (8, 6))})
    delta = torch.zeros(8, 6)
    delta[:4] = torch.tensor([1.0, 5.0, 3.0, 2.0]).unsqueeze(1) * torch.tensor([6.0, 1, 5, 2, 4, 3])
    delta[7] = 100.0  # a row the mask dropped earlier never returns, however large
    pruned = prune(mask, magnitudes({"a": delta}), 0.25, "per_matrix")
    m = pruned.modules["a"]
    assert m.rows.tolist() == [1, 2] and m.cols.tolist() == [0, 2]  # ceil(0.25 × 8), ceil(0.25 × 6)


def test_the_global_rule_keeps_the_total_budget_and_favours_concentrated_matrices():
    mask = full_mask({"a": (4, 4), "b": (4, 4)})
    flat, peaked = torch.ones(4, 4), torch.diag(torch.tensor([10.0, 0.1, 0.1, 0.1]))
    pruned = prune(mask, magnitudes({"a": flat, "b": peaked}), 0.5, "global")
    rows = {n: m.rows.numel() for n, m in pruned.modules.items()}
    assert sum(rows.values()) == 4 and 0 in pruned.modules["b"].rows.tolist()


def test_the_global_rule_counts_emptied_matrices_so_the_search_ends_at_p_of_the_whole_model():
    # After a round empties matrix a, the next round's budget is still a share of a's and b's rows
    # (a's share goes to b), so IMP at p holds TASO's global counts at p, not fewer.
    mask = Mask(
        {
            "a": ModuleMask(torch.arange(0), torch.arange(0), (8, 8)),
            "b": ModuleMask(torch.arange(8), torch.arange(8), (8, 8)),
        }
    )
    pruned = prune(mask, magnitudes({"a": torch.zeros(8, 8), "b": torch.rand(8, 8)}), 0.25, "global")
    assert pruned.modules["a"].empty
    assert (pruned.modules["b"].rows.numel(), pruned.modules["b"].cols.numel()) == (4, 4)
    assert kept_fraction(pruned) == 0.25
    # The budget never revives what an earlier round dropped: at most everything still kept.
    assert (
        prune(mask, magnitudes({"a": torch.zeros(8, 8), "b": torch.rand(8, 8)}), 0.75, "global")
        .modules["b"]
        .rows.numel()
        == 8
    )


def _setup(make_model):
    model = make_model("bert")
    return {n: tuple(m.weight.shape) for n, m in find_targets(model).items()}


def test_the_rewind_gives_every_round_theta0_on_what_it_keeps(make_model):
    shapes = _setup(make_model)
    config = MethodConfig(rank=2, alpha=4.0, seed=3)
    big = full_mask(shapes)
    small = prune(big, magnitudes({n: torch.rand(*s) for n, s in shapes.items()}), 0.5, "per_matrix")
    theta0 = initial_factors(make_model("bert"), list(shapes), 2, 3)
    for mask in (big, small):
        model = Imp(config).prepare(make_model("bert"), mask)
        for name, layer in masked_layers(model).items():
            assert torch.equal(layer.lora_A, theta0[name][:, layer.cols])
            assert torch.count_nonzero(layer.lora_B) == 0


def test_a_search_killed_between_rounds_resumes_to_the_same_final_mask(tmp_path, make_model, make_features):
    shapes = _setup(make_model)
    trainer = round_trainer(
        lambda: make_model("bert"),
        make_features("bert", 16),
        TrainConfig(lr=1e-2, max_steps=3, batch_size=4),
        MethodConfig(rank=2, alpha=4.0),
    )
    config = ImpConfig(q=0.5, steps=3)
    want, rounds = search(shapes, trainer, config, 0.25, tmp_path / "whole")
    assert [r.index for r in rounds] == [1, 2] and [round(r.kept_fraction, 2) for r in rounds] == [0.5, 0.25]
    assert kept_fraction(want) == pytest.approx(0.25, abs=0.02)

    calls = []

    def dies_in_round_two(mask):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return trainer(mask)

    with pytest.raises(KeyboardInterrupt):
        search(shapes, dies_in_round_two, config, 0.25, tmp_path / "killed")
    assert (tmp_path / "killed" / "round-1").is_dir() and not (tmp_path / "killed" / "round-2").exists()
    got, again = search(shapes, trainer, config, 0.25, tmp_path / "killed")
    assert got.digest == want.digest and [r.index for r in again] == [1, 2]
