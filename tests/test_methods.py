"""The method contract: every registered method trains through taso.train and exports an adapter
that plain PEFT loads, and a new method needs nothing but a class of its own."""

from __future__ import annotations

import json

import pytest
import torch
from test_stages import ROOT, files, make_project, run_all

from taso import methods
from taso.importance import score_importance
from taso.masks import derive_rows_cols, random_like
from taso.methods import METHODS, Method, MethodConfig
from taso.targets import find_targets, head_names
from taso.train import TrainConfig, TrainingInterrupted, train, trainable_state

CONFIG = MethodConfig(rank=2, alpha=4.0, seed=0)


def prepared(name: str, kind: str, make_model, make_batches):
    """A fresh tiny model of ``kind`` prepared by the method registered as ``name`` (with a mask when it needs one)."""
    method = methods.build(name, CONFIG)
    model = make_model(kind)
    mask = None
    if method.needs == "mask":
        mask = method.region(derive_rows_cols(score_importance(model, make_batches(kind)), 0.5))
    return method, method.prepare(model, mask), mask


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("kind", ["bert", "llama_cls"])
def test_every_method_trains_and_its_adapter_loads_in_plain_peft(
    name, kind, make_model, make_batches, make_features, get_logits, tmp_path
):
    from peft import PeftModel

    method, model, mask = prepared(name, kind, make_model, make_batches)
    before = trainable_state(model)
    result = train(
        model, make_features(kind), TrainConfig(lr=1e-2, max_steps=4, batch_size=4), method=method, progress=False
    )
    assert result.steps == 4
    assert any(not torch.equal(p, before[n]) for n, p in trainable_state(model).items())
    out = method.export(model, tmp_path / "adapter", base_model="tiny", task_type="SEQ_CLS", extra={"method": name})
    assert json.loads((out / "taso.json").read_text()) == {"method": name}
    loaded = PeftModel.from_pretrained(make_model(kind), str(out)).eval()
    batch = make_batches(kind)[0]
    model.eval()
    torch.testing.assert_close(get_logits(loaded, batch), get_logits(model, batch), atol=1e-5, rtol=0)
    assert (method.mask() is not None) == method.makes_mask
    if mask is not None:
        assert method.mask().digest == mask.digest


def test_trainable_counts_say_what_each_method_trains(make_model, make_batches):
    def counts(name):
        method, model, mask = prepared(name, "bert", make_model, make_batches)
        return method.count_trainable(model), mask

    model = make_model("bert")
    head = sum(p.numel() for h in head_names(model) for p in getattr(model, h).parameters())
    dense = sum(CONFIG.rank * (m.in_features + m.out_features) for m in find_targets(model).values())
    everything = sum(p.numel() for p in model.parameters())
    lora, _ = counts("lora")
    assert lora == {"adapter": dense, "head": head, "backbone": 0, "total": dense + head}
    for name in ("taso", "random"):
        c, mask = counts(name)
        assert c == {"adapter": mask.trainable_params(CONFIG.rank), "head": head, "backbone": 0, "total": c["total"]}
    assert counts("head")[0] == {"adapter": 0, "head": head, "backbone": 0, "total": head}
    assert counts("full")[0] == {"adapter": 0, "head": head, "backbone": everything - head, "total": everything}


def test_random_region_keeps_the_counts_and_follows_the_seed(make_model, make_batches):
    mask = derive_rows_cols(score_importance(make_model("bert"), make_batches("bert")), 0.5)
    region = methods.build("random", CONFIG).region(mask)
    assert region.digest == random_like(mask, seed=1000).digest != mask.digest
    for n, m in mask.modules.items():
        assert (len(region.modules[n].rows), len(region.modules[n].cols)) == (len(m.rows), len(m.cols))
    other = methods.build("random", MethodConfig(seed=1)).region(mask)
    assert other.digest != region.digest
    assert methods.build("taso", CONFIG).region(mask) is mask


def test_mask_contract_is_enforced(make_model):
    with pytest.raises(ValueError, match="trains on a core region: give it a mask"):
        methods.build("taso", CONFIG).prepare(make_model("bert"))
    with pytest.raises(ValueError, match="'lora' takes no mask"):
        from taso.masks import Mask

        methods.build("lora", CONFIG).prepare(make_model("bert"), Mask({}))
    with pytest.raises(
        ValueError, match=r"unknown method 'nope'; choose one of taso, random, imp, losia, lora, head, full"
    ):
        methods.build("nope")
    with pytest.raises(ValueError, match="no task head"):
        methods.build("head").prepare(make_model("llama_lm"))


class BiasOnly(Method):
    """A method that lives only in this test: it trains the biases of the target linears, counts its
    steps in a hook, and carries that count through a checkpoint."""

    name = "bias-only"

    def prepare(self, model, mask=None):
        self._check_mask(mask)
        model.requires_grad_(False)
        for layer in find_targets(model, self.config.targets).values():
            layer.bias.requires_grad_(True)
        self.seen: list[int] = []
        self.grad_norms: list[float] = []
        return model

    def on_backward(self, model, step):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.stack([g.norm() for g in grads]).norm()))

    def on_step(self, model, step, optimizer):
        self.seen.append(step)

    def state_dict(self):
        return {"seen": torch.tensor(self.seen)}

    def load_state_dict(self, state):
        self.seen = state["seen"].tolist()


def test_a_method_defined_elsewhere_trains_through_train_unchanged(make_model, make_features, tmp_path):
    cfg = TrainConfig(lr=1e-2, max_steps=6, batch_size=4, checkpoint_every=2)
    method = BiasOnly()
    model = method.prepare(make_model("bert"))
    result = train(model, make_features("bert"), cfg, method=method, progress=False)
    assert method.seen == list(range(6)) and len(method.grad_norms) == 6 and all(g > 0 for g in method.grad_norms)
    assert set(result.rates) == {"other"}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith(".bias") for n in trained)

    # Interrupted after step 3, then resumed: the hook's own state comes back from the checkpoint.
    class Stop(BiasOnly):
        def on_step(self, model, step, optimizer):
            super().on_step(model, step, optimizer)
            if step == 2:
                raise TrainingInterrupted("stop")

    ckpt = tmp_path / "ckpt.pt"
    first = Stop()
    with pytest.raises(TrainingInterrupted):
        train(
            first.prepare(make_model("bert")), make_features("bert"), cfg, method=first, checkpoint=ckpt, progress=False
        )
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["method"]["seen"].tolist() == [0, 1]
    again = BiasOnly()
    resumed = again.prepare(make_model("bert"))
    train(resumed, make_features("bert"), cfg, method=again, checkpoint=ckpt, progress=False)
    assert again.seen == [0, 1, 2, 3, 4, 5]
    assert all(torch.equal(p, trainable_state(model)[n]) for n, p in trainable_state(resumed).items())


# --- through the pipeline ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_runs_through_the_pipeline_and_registers_with_its_tag(name, tmp_path, tiny_model, monkeypatch):
    import yaml
    from mlflow import MlflowClient

    project = make_project(tmp_path, tiny_model, monkeypatch)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["method"] = name
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    run_all(project)
    art = project / "artifacts" / "entailment"
    trained = json.loads((art / "train.json").read_text())
    assert trained["method"] == name
    version = MlflowClient(registry_uri=f"sqlite:///{project / 'mlflow.db'}").get_model_version("taso-entailment", "1")
    assert version.tags["method"] == name
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("taso").experiment_id])
    assert {r.data.tags["taso.stage"] for r in runs} >= {"train", "evaluate"}
    assert {r.data.tags.get("taso.method") for r in runs} == {name}  # every stage's run says which method
    history = (art / "subnet_history.csv").read_text().splitlines()
    if methods.build(name).needs is None:  # no region given: the mask stages say so in a meta.json, nothing else
        for folder in (art / "calibration", art / "mask", project / "artifacts" / "importance" / "entailment"):
            assert files(folder) == ["meta.json"]
            assert f"train.method is {name}" in json.loads((folder / "meta.json").read_text())["skipped"]
        assert json.loads((art / "adapter" / "taso.json").read_text())["mask_digest"] is None
    if name == "losia":  # the region it ended on is published with the version, and how it moved is a plot
        from taso.masks import Mask

        subnet = Mask.load(art / "subnet")
        assert subnet.meta["rule"] == "losia" and version.tags["mask_digest"] == subnet.digest
        assert history[0] == "step,layer,module,candidate,block_mass,row_overlap,col_overlap" and len(history) > 1
        assert trained["method_details"]["relocalizations"] == len(history) - 1
    elif methods.build(name).needs is None:
        assert "mask_digest" not in version.tags and files(art / "subnet") == ["meta.json"]
    else:  # the mask written is the one the adapter trained on (random: TASO's counts, other rows)
        assert files(art / "subnet") == ["meta.json"] and history == [history[0]]
        from taso.masks import Mask

        mask = Mask.load(art / "mask")
        assert (mask.meta["rule"] == "random") == (name == "random") and version.tags["mask_digest"] == mask.digest
        assert json.loads((art / "adapter" / "taso.json").read_text())["mask_digest"] == mask.digest
    rounds = (art / "imp_rounds.csv").read_text().splitlines()
    if name == "imp":  # the rounds ran in derive-mask, each round's mask kept, their cost on the run
        from taso.masks import Mask

        assert [line.split(",")[0] for line in rounds] == ["index", "1", "2"]  # q 0.5 down to mask.p 0.25
        assert Mask.load(art / "mask").digest == Mask.load(art / "mask" / "rounds" / "round-2").digest
        assert files(art / "calibration") == ["meta.json"]  # no importance: the search replaces it
        (derive,) = [r for r in runs if r.data.tags["taso.stage"] == "derive-mask"]
        assert derive.data.metrics["search_rounds"] == 2 and derive.data.metrics["search_seconds"] > 0
        assert not list((project / "checkpoints" / "entailment").glob("imp-*"))  # the scratch rounds are gone
    else:
        assert rounds == ["index,kept_fraction,final_loss,seconds"]
    assert "accuracy" in json.loads((art / "metrics.json").read_text())


def test_a_maskless_method_cannot_be_a_mask_source(tmp_path, tiny_model, monkeypatch):
    import yaml

    from pipeline import registry, tracking
    from pipeline.params import ParamsError, load_params

    project = make_project(tmp_path, tiny_model, monkeypatch)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["method"] = "head"
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    run_all(project)
    tracking.configure(project)
    with pytest.raises(registry.RegistryError, match="trained by method 'head', which has no mask"):
        registry.pull("registry:taso-entailment@candidate", tmp_path / "pulled", what="mask")
    raw["tasks"]["entailment"]["mask_source"] = "registry:taso-entailment@candidate"
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="train.method head trains without a mask, so it cannot use registry:"):
        load_params(project / "params.yaml")


def test_the_quick_check_knows_exactly_the_registered_methods(tmp_path):
    # check-params (quick: no torch) accepts a name only if the registry has it, and every one it has.
    import yaml

    from pipeline.params import ParamsError, load_params
    from taso.names import METHOD_NAMES

    assert METHOD_NAMES == tuple(METHODS)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["method"] = "tasoo"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"train\.method: unknown method 'tasoo'; choose one of taso, random"):
        load_params(tmp_path / "params.yaml", quick=True)
