"""LoSiA: its importance EMAs, greedy re-localization, schedule and rate against hand computations;
LoSiA-Pro's backward against dense autograd; training that leaves the base untouched, exports
exactly and resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
from test_train import Interrupt, interrupt_at

from taso import methods
from taso.block import BlockLinear
from taso.config import LosiaConfig, MethodConfig
from taso.masks import Mask, ModuleMask
from taso.subnet import Schedule, Sensitivity, candidates, relocalize, rewarm_factor, taylor_importance
from taso.targets import find_targets
from taso.train import TrainConfig, train, trainable_state


def losia(**knobs) -> methods.Method:
    return methods.build("losia", MethodConfig(seed=0, losia=LosiaConfig(**knobs)))


# --- the pure rules -----------------------------------------------------------------------------


def test_importance_emas_and_score_match_a_hand_computation_over_three_steps():
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    grads = [torch.tensor([[1.0, 2.0], [0.5, -4.0]]), torch.tensor([[-2.0, 0.0], [1.0, 1.0]]), torch.ones(2, 2)]
    ema = Sensitivity.zeros((2, 2))
    mean, unc = [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]
    for g in grads:
        ema.update(taylor_importance(w, g), 0.85, 0.85)
        for i in range(2):
            for j in range(2):
                jv = w[i, j].item() * g[i, j].item()
                imp = abs(jv - 0.5 * jv * jv)
                mean[i][j] = 0.85 * mean[i][j] + 0.15 * imp
                unc[i][j] = 0.85 * unc[i][j] + 0.15 * abs(imp - mean[i][j])
    want = torch.tensor(mean) * torch.tensor(unc)
    torch.testing.assert_close(ema.score(), want)
    assert torch.equal(taylor_importance(w, grads[0], "param_first"), (w * grads[0]).abs())
    assert torch.equal(taylor_importance(w, grads[0], "param_second"), (w * grads[0]) ** 2)


@pytest.mark.parametrize(
    ("score", "winner"),
    [
        # (b) keeps (a)'s rows and picks the best columns for them, so it never has less mass than
        # (a): (a) wins only a tie, kept as the first candidate; here two cross rows and columns.
        ([[9, 0, 0, 9], [0, 0, 0, 0], [0, 0, 0, 0], [9, 0, 0, 9]], "rows_cols"),
        ([[1, 0, 0, 4], [0, 4, 5, 5], [0, 4, 0, 0], [0, 0, 1, 2]], "rows_first"),
        ([[4, 2, 0, 2], [0, 3, 0, 0], [0, 0, 3, 4], [5, 0, 0, 0]], "cols_first"),
    ],
)
def test_the_chosen_subnet_is_the_candidate_with_the_largest_block_mass(score, winner):
    s = torch.tensor(score, dtype=torch.float)
    found = candidates(s, 2, 2)
    masses = {n: float(s[r][:, c].sum()) for n, (r, c) in found.items()}
    best = max(masses.values())
    assert masses[winner] == best and (winner == "rows_cols" or sorted(masses.values())[-2] < best)
    rows, cols, chosen, mass = relocalize(s, 2, 2)
    assert chosen == winner and mass == best
    assert (rows.tolist(), cols.tolist()) == (found[winner][0].tolist(), found[winner][1].tolist())
    assert relocalize(s, 2, 2, "rows_cols")[2] == "rows_cols"  # a single-candidate strategy takes that one


def test_the_schedule_gives_each_layer_its_slot_and_moves_it_on_the_slots_last_step():
    s = Schedule(period=3, layers=2)
    record = [s.recording(t) for t in range(12)]  # two full cycles of 2 layers × 3 steps
    move = [s.relocalizing(t) for t in range(12)]
    assert record == [[0]] * 3 + [[1]] * 3 + [[0]] * 3 + [[1]] * 3
    assert move == [[], [], [0], [], [], [1]] * 2  # layer l first moves at step (l+1)·T − 1
    assert [t for t in range(12) if s.starts_slot(t)] == [0, 3, 6, 9]
    everyone = Schedule(period=3, layers=2, kind="all")
    assert everyone.recording(4) == [0, 1] and everyone.relocalizing(5) == [0, 1] and everyone.relocalizing(4) == []


def test_the_rate_warms_up_re_warms_after_a_move_and_follows_the_cosine_otherwise():
    total, warmup, period, floor = 100, 10, 5, 0.1

    def cos(u):
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * u))

    assert rewarm_factor(4, total, warmup, period, None, floor) == pytest.approx(0.4)  # warm-up t/W0
    assert rewarm_factor(4, total, warmup, period, 2, floor) == pytest.approx(0.4)  # warm-up wins
    assert rewarm_factor(42, total, warmup, period, 40, floor) == pytest.approx(2 / 5 * cos(40 / 90))  # re-warm
    assert rewarm_factor(45, total, warmup, period, 40, floor) == pytest.approx(cos(35 / 90))  # back on the cosine
    assert rewarm_factor(55, total, warmup, period, None, floor) == pytest.approx(cos(45 / 90))
    assert rewarm_factor(100, total, warmup, period, None, floor) == pytest.approx(floor)


# --- the layer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [False, True])
def test_losia_pro_gives_dense_autograds_block_gradient_and_input_gradient(record):
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10)
    rows, cols = torch.tensor([1, 4, 7]), torch.tensor([0, 2, 5, 11])
    layer = BlockLinear(base, rows, cols)
    with torch.no_grad():
        layer.block.normal_()  # a trained block, so the working weight differs from the base
    layer.record = record
    x = torch.randn(3, 5, 12, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        y = layer(x)
    y.pow(2).sum().backward()

    w = layer.weight.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x2, w, base.bias).pow(2).sum().backward()
    torch.testing.assert_close(layer.block.grad, w.grad[rows][:, cols])
    torch.testing.assert_close(x.grad, x2.grad)
    assert (layer.full_grad is not None) == record
    if record:
        torch.testing.assert_close(layer.full_grad, w.grad)
    # The input is kept whole only while recording; otherwise only its k_c block columns.
    assert ((3, 5, 12) in saved) == record and ((3, 5, len(cols)) in saved) != record


def test_moving_folds_the_block_into_the_working_weight_and_leaves_the_base_alone():
    base = torch.nn.Linear(6, 4)
    pristine = base.weight.detach().clone()
    layer = BlockLinear(base, torch.tensor([0, 1]), torch.tensor([2, 3]))
    with torch.no_grad():
        layer.block.fill_(1.0)
    layer.move(torch.tensor([2, 3]), torch.tensor([0, 1]))
    with torch.no_grad():
        layer.block.fill_(2.0)
    delta = layer.delta_weight()
    want = torch.zeros(4, 6)
    want[:2, 2:4], want[2:, :2] = 1.0, 2.0
    torch.testing.assert_close(delta, want)
    assert torch.equal(base.weight, pristine)


# --- training -----------------------------------------------------------------------------------

CFG = TrainConfig(lr=1e-2, max_steps=12, batch_size=4, checkpoint_every=5, log_every=1, seed=1)


def _trained(make_model, make_features, method, **kwargs):
    model = method.prepare(make_model("bert"))
    result = train(model, make_features("bert", 48), CFG, method=method, progress=False, **kwargs)
    return model, result


def test_training_moves_every_layer_and_changes_nothing_outside_the_blocks_it_visited(
    make_model, make_features, monkeypatch
):
    method = losia(p=0.25, period=2)
    model = method.prepare(make_model("bert"))
    base = {n: layer.base.weight.detach().clone() for n, layer in method._layers.items()}
    visited = {n: torch.zeros_like(w, dtype=torch.bool) for n, w in base.items()}
    names = {id(layer): n for n, layer in method._layers.items()}

    def mark(layer):
        visited[names[id(layer)]][layer.rows.unsqueeze(1), layer.cols] = True

    for layer in method._layers.values():
        mark(layer)
    move = BlockLinear.move

    def recorded_move(self, rows, cols):
        move(self, rows, cols)
        mark(self)

    monkeypatch.setattr(BlockLinear, "move", recorded_move)
    train(model, make_features("bert", 48), CFG, method=method, progress=False)
    hist = method.history()
    assert {h["layer"] for h in hist} == {0, 1} and {h["step"] for h in hist} == {1, 3, 5, 7, 9, 11}
    assert all(0 <= h["row_overlap"] <= 1 and h["block_mass"] >= 0 for h in hist)
    for name, layer in method._layers.items():
        assert torch.equal(layer.base.weight, base[name])  # the base itself is never written
        outside = ~visited[name]
        assert outside.any() and torch.equal(layer.weight[outside], base[name][outside])  # bit for bit
        assert torch.count_nonzero(layer.delta_weight()[outside]) == 0
        assert torch.count_nonzero(layer.delta_weight()) > 0


def test_an_interrupted_run_resumed_mid_slot_equals_an_uninterrupted_one(tmp_path, make_model, make_features):
    want_method = losia(p=0.25, period=3)
    want_model, want_result = _trained(make_model, make_features, want_method)
    ckpt = tmp_path / "ckpt.pt"
    crashed = losia(p=0.25, period=3)
    with pytest.raises(Interrupt):  # dies at step 7: the checkpoint (step 5) is mid-slot of layer 1
        _trained(make_model, make_features, crashed, checkpoint=ckpt, loss_fn=interrupt_at(7))
    assert torch.load(ckpt, weights_only=True)["step"] == 5
    resumed = losia(p=0.25, period=3)
    model, result = _trained(make_model, make_features, resumed, checkpoint=ckpt)
    assert result.resumed_from == 5
    got, want = trainable_state(model), trainable_state(want_model)
    assert all(torch.equal(got[n], want[n]) for n in want)
    for name, layer in resumed._layers.items():
        other = want_method._layers[name]
        assert torch.equal(layer.rows, other.rows) and torch.equal(layer.weight, other.weight)
    assert resumed.history() == want_method.history() and result.history == want_result.history


def test_a_warm_start_begins_on_the_masks_rows_and_columns(make_model):
    model = make_model("bert")
    targets = find_targets(model)
    modules = {
        n: ModuleMask(torch.arange(0, m.out_features, 2), torch.arange(3), tuple(m.weight.shape))
        for n, m in targets.items()
    }
    method = losia(p=0.25, start="mask")
    assert method.needs == "mask"
    method.prepare(model, Mask(modules))
    for name, layer in method._layers.items():
        given = modules[name]
        assert set(layer.rows.tolist()) <= set(given.rows.tolist())  # more given than k_r: a subset
        assert set(given.cols.tolist()) <= set(layer.cols.tolist())  # fewer given than k_c: all, topped up
        assert len(layer.cols) == int(0.25 * layer.in_features)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"p": 0.0}, "losia.p must be in"),
        ({"p": 1.5}, "losia.p must be in"),
        ({"period": 0}, "losia.period must be at least 1"),
        ({"taylor": "third"}, "losia.taylor: unknown value 'third'"),
        ({"strategy": "greedy"}, "losia.strategy: unknown value 'greedy'"),
        ({"schedule": "sometimes"}, "losia.schedule: unknown value"),
    ],
)
def test_bad_knobs_are_refused_by_name(knobs, message):
    with pytest.raises(ValueError, match=message):
        losia(**knobs)


def test_a_block_that_rounds_to_nothing_a_period_past_the_run_and_a_mask_of_other_shapes_are_refused(
    make_model, make_features
):
    with pytest.raises(ValueError, match=r"leaves .* a block of 0x0: raise p to at least"):
        losia(p=0.01).prepare(make_model("bert"))
    method = losia(p=0.25, period=50)
    model = method.prepare(make_model("bert"))
    with pytest.raises(ValueError, match="losia.period 50 is longer than the run"):
        train(model, make_features("bert", 16), CFG, method=method, progress=False)
    other = Mask({"bert.encoder.layer.0.attention.self.query": ModuleMask([0], [0], (7, 7))})
    with pytest.raises(Exception, match="does not fit|shape"):
        losia(p=0.25, start="mask").prepare(make_model("bert"), other)


# --- through the pipeline -----------------------------------------------------------------------


def _losia_project(tmp_path, tiny_model, monkeypatch, **losia_knobs):
    import yaml
    from test_stages import make_project

    project = make_project(tmp_path, tiny_model, monkeypatch)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["method"] = "losia"
    raw["losia"] |= losia_knobs
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    return project


def test_a_warm_start_from_the_tasks_own_mask_runs_the_mask_stages_and_publishes_where_it_ended(
    tmp_path, tiny_model, monkeypatch
):
    import json

    from test_stages import run_all

    project = _losia_project(tmp_path, tiny_model, monkeypatch, p=0.25, start="mask")
    run_all(project)
    art = project / "artifacts" / "entailment"
    start, ended = Mask.load(art / "mask"), Mask.load(art / "subnet")
    assert start.meta["rule"] == "global" and ended.meta["start_mask"] == start.digest
    assert json.loads((art / "adapter" / "taso.json").read_text())["mask_digest"] == start.digest
    assert "accuracy" in json.loads((art / "metrics.json").read_text())  # evaluate checked it against the mask
    # LoSiA's own knobs are on the train run (and in the key a checkpoint resumes by), so runs differ by them.
    import mlflow

    (run,) = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`taso.stage` = 'train'", output_format="list"
    )
    assert run.data.params["losia.start"] == "mask" and float(run.data.params["losia.p"]) == 0.25


def test_a_period_longer_than_the_run_stops_the_train_stage_before_it_writes(tmp_path, tiny_model, monkeypatch):
    from pipeline.steps import calibrate, derive_mask, score, train
    from pipeline.steps import data as data_stage

    project = _losia_project(tmp_path, tiny_model, monkeypatch, period=100)
    for stage in (data_stage, calibrate, score, derive_mask):
        stage.run("entailment", project)
    with pytest.raises(ValueError, match="losia.period 100 is longer than the run"):
        train.run("entailment", project)
    art = project / "artifacts" / "entailment"
    assert not any((art / name).exists() for name in ("adapter", "subnet", "train.json", "subnet_history.csv"))


def test_a_bf16_model_trains_its_blocks_in_bf16(make_model, make_features):
    method = losia(p=0.25, period=2)
    model = method.prepare(make_model("bert").to(torch.bfloat16))
    train(
        model, make_features("bert", 16), TrainConfig(lr=1e-2, max_steps=4, batch_size=4), method=method, progress=False
    )
    layer = next(iter(method.layers().values()))
    assert layer.block.dtype == torch.bfloat16 and torch.count_nonzero(layer.delta_weight()) > 0


def test_the_rank_factor_for_a_budget_is_the_largest_that_fits_it():
    from taso.subnet import block_params, p_for_budget

    minilm = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]  # one block's targets
    lora_r1 = sum(m + n for m, n in minilm)
    p = p_for_budget(minilm, lora_r1)
    assert block_params(minilm, p) == lora_r1 == block_params(minilm, 1 / 16)  # the GLUE protocol's 1/16
    assert block_params(minilm, p + 1e-3) > lora_r1
