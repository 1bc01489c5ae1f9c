"""Each stage, in-process on a tiny BERT: it writes exactly its declared outs, and bad input stops it cleanly."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from taso import demo

ROOT = Path(__file__).resolve().parents[1]


def tiny_bert_folder(path: Path) -> Path:
    """A 2-layer BERT and a word-level tokenizer covering the demo vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = set()
    for name in demo.TASKS:
        for ex in demo.demo_split(name, "train", 200) + demo.demo_split(name, "eval", 50):
            words.update(re.findall(r"\w+|[^\w\s]", (ex["text"] + " " + ex.get("text_pair", "")).lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(path / "vocab.txt")).save_pretrained(path)  # transformers 5 ignores vocab_file=
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture
def project(tmp_path, tiny_model, monkeypatch) -> Path:
    return make_project(tmp_path, tiny_model, monkeypatch)


def make_project(tmp_path: Path, tiny_model: Path, monkeypatch) -> Path:
    """A project root on the tiny BERT with the demo entailment task (few examples) and its own MLflow store."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["base"] = str(tiny_model)
    raw["model"]["max_length"] = 32
    raw["tasks"] = {"entailment": {**raw["tasks"]["entailment"], "max_train": 40, "max_eval": 16}}
    raw["compositions"] = {}
    raw["calibrate"]["n"] = 8
    raw["train"] |= {"max_steps": 4, "epochs": 2, "checkpoint_every": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def run_all(root: Path, task: str = "entailment") -> None:
    from pipeline.steps import calibrate, derive_mask, evaluate, promote, score, train
    from pipeline.steps import data as data_stage

    for stage in (data_stage, calibrate, score, derive_mask, train, evaluate, promote):
        stage.run(task, root)


def test_every_stage_logs_to_the_experiment_params_yaml_names(project):
    import mlflow

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tracking"]["experiment"] = "entailment-study"
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    run_all(project)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    names = {mlflow.get_experiment(r.info.experiment_id).name for r in runs}
    assert names == {"entailment-study"}
    stages = {r.data.tags.get("taso.stage") for r in runs}
    assert {"calibrate", "score", "derive-mask", "train", "evaluate", "promote"} <= stages


def test_stages_write_exactly_their_outs(project):
    run_all(project)
    art = project / "artifacts" / "entailment"
    assert files(art) == [
        "adapter/README.md",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/meta.json",
        "adapter/taso.json",
        "calibration/calibration.jsonl",
        "calibration/meta.json",
        "data/eval.json",
        "data/train.json",
        "imp_rounds.csv",
        "importance_heatmap.png",
        "mask/mask.json",
        "mask/mask.safetensors",
        "mask/meta.json",
        "metrics.json",
        "promotion.json",
        "subnet/meta.json",
        "subnet_history.csv",
        "train.json",
        "train_curve.csv",
    ]
    assert files(project / "artifacts" / "importance") == [
        "entailment/importance.safetensors",
        "entailment/meta.json",
    ]
    metrics = json.loads((art / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "f1", "n_examples"} and metrics["n_examples"] == 16
    trained = json.loads((art / "train.json").read_text())
    assert trained["steps"] == 4 and trained["registry_version"] == 1
    mask_json = json.loads((art / "mask" / "mask.json").read_text())
    # mask.json counts at rank 1: the mask does not depend on the rank that trains on it.
    rank = yaml.safe_load((project / "params.yaml").read_text())["train"]["rank"]
    assert mask_json["rank"] == 1 and trained["trainable_adapter"] == rank * mask_json["trainable_params"]
    adapter = json.loads((art / "adapter" / "taso.json").read_text())
    assert adapter["mask_digest"] == mask_json["digest"]
    assert adapter["data_digest"] == json.loads((art / "data" / "train.json").read_text())["digest"]
    # Nothing is left behind: no temp folders next to the outs, no checkpoint after success.
    assert not [p for p in art.iterdir() if p.name.startswith(".")]
    assert not list((project / "checkpoints").rglob("*.pt"))


def test_mask_from_file_source_records_lineage(project, tmp_path_factory):
    run_all(project)
    published = tmp_path_factory.mktemp("published") / "mask"
    import shutil

    shutil.copytree(project / "artifacts" / "entailment" / "mask", published)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tasks"]["reuse"] = {**raw["tasks"]["entailment"], "mask_source": f"file:{published}"}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    run_all(project, "reuse")
    from taso.masks import Mask

    reused, original = Mask.load(project / "artifacts" / "reuse" / "mask"), Mask.load(published)
    assert reused.digest == original.digest
    assert reused.meta["source"] == f"file:{published}" and reused.meta["source_digest"] == original.digest


def own_tsv_task(project: Path, data: Path, files: dict[str, str], **params) -> None:
    """Write ``files`` (name → text) into ``data`` and make the project's only task ``mine`` read them."""
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    task = {
        "source": str(data),
        "splits": {"train": "train.tsv", "eval": "dev.tsv"},
        "text_fields": ["sentence"],
        "labels": ["0", "1"],
        "mask_source": "own",
    }
    raw["tasks"] = {"mine": task | params.pop("task", {})}
    for section, values in params.items():
        raw[section] |= values
    (project / "params.yaml").write_text(yaml.safe_dump(raw))


def test_evaluate_and_promote_refuse_a_version_that_train_did_not_register(project, monkeypatch):
    # A version number alone may name another model: another store, or a train.json older than the store.
    from mlflow import MlflowClient

    from pipeline.errors import RegistryError
    from pipeline.steps import evaluate, promote

    run_all(project)
    art = project / "artifacts" / "entailment"
    trained = json.loads((art / "train.json").read_text())
    client = MlflowClient(registry_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_model_version("taso-entailment", "1").run_id == trained["registry_run_id"]
    (art / "train.json").write_text(json.dumps(trained | {"registry_run_id": "0" * 32}))
    scored, decided = ((art / f).read_bytes() for f in ("metrics.json", "promotion.json"))
    for stage in (evaluate, promote):
        with pytest.raises(
            RegistryError, match=r"train\.json names version 1 of taso-entailment, but run \w+ registered"
        ):
            stage.run("entailment", project)
    assert (art / "metrics.json").read_bytes() == scored and (art / "promotion.json").read_bytes() == decided
    assert "evaluation_error" not in client.get_model_version("taso-entailment", "1").tags  # not this task's to mark
    # Another store: the version is not there at all.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'other.db'}")
    (art / "train.json").write_text(json.dumps(trained))
    with pytest.raises(
        RegistryError, match=r"names version 1 of taso-entailment, which this store lacks .*MLFLOW_TRACKING_URI"
    ):
        evaluate.run("entailment", project)


def test_the_data_fingerprint_changes_with_what_the_stages_read_and_only_then(project, tmp_path):
    # DVC reruns what reads a split only when its fingerprint's bytes change: the same data must
    # give the same bytes, an edit to one file must change that split's fingerprint alone.
    from pipeline.steps import data as data_stage

    rows = "".join(f"{w} film\t{i % 2}\n" for i, w in enumerate(["good", "bad", "fine", "dull"]))
    files = {"train.tsv": "sentence\tlabel\n" + rows, "dev.tsv": "sentence\tlabel\n" + rows}
    own_tsv_task(project, tmp_path / "data", files)
    folder = data_stage.run("mine", project)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    assert sorted(before) == ["eval.json", "train.json"]
    fp = json.loads(before["train.json"])
    assert fp["examples"] == 4 and fp["file"] == str(tmp_path / "data" / "train.tsv") and fp["split"] == "train"
    shutil.rmtree(folder)  # as DVC removes an out before its stage runs
    data_stage.run("mine", project)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before

    (tmp_path / "data" / "dev.tsv").write_text("sentence\tlabel\n" + rows + "awful film\t0\n")
    data_stage.run("mine", project)
    assert (folder / "train.json").read_bytes() == before["train.json"]
    assert json.loads((folder / "eval.json").read_text())["examples"] == 5
    # A column the task does not read is not what the stages see: no rerun for it.
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\tnote\n" + rows.replace("\n", "\tx\n"))
    data_stage.run("mine", project)
    assert (folder / "train.json").read_bytes() == before["train.json"]
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\n" + rows.replace("good film\t0", "good film\t1"))
    data_stage.run("mine", project)
    assert json.loads((folder / "train.json").read_text())["digest"] != fp["digest"]


def test_a_relative_source_is_read_from_the_project_root_not_the_working_directory(project, tmp_path, monkeypatch):
    from pipeline.steps import calibrate
    from pipeline.steps import data as data_stage

    rows = "".join(f"{w} film\t{i % 2}\n" for i, w in enumerate(["good", "bad", "fine", "dull"]))
    own_tsv_task(project, project / "data", {f: "sentence\tlabel\n" + rows for f in ("train.tsv", "dev.tsv")})
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tasks"]["mine"]["source"] = "data"  # as a user writes it in params.yaml
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # somewhere else: `taso data --root <project>`
    folder = data_stage.run("mine", project)
    assert json.loads((folder / "train.json").read_text())["file"] == "data/train.tsv"  # as named: bytes do not move
    calibrate.run("mine", project)
    assert (project / "artifacts" / "mine" / "calibration" / "calibration.jsonl").is_file()


def test_a_stage_refuses_data_changed_since_it_was_fingerprinted(project, tmp_path):
    # A stage started by hand after an edit would train on examples no artifact records.
    from pipeline.steps import calibrate, derive_mask, score, train
    from pipeline.steps import data as data_stage
    from taso.data import DataError

    rows = "".join(f"{w} film\t{i % 2}\n" for i, w in enumerate(["good", "bad", "fine", "dull"] * 3))
    own_tsv_task(project, tmp_path / "data", {f: "sentence\tlabel\n" + rows for f in ("train.tsv", "dev.tsv")})
    with pytest.raises(
        DataError, match=r"data/train\.json: not found; .* run `dvc repro` \(or `taso data --task mine` first\)"
    ):
        calibrate.run("mine", project)
    for stage in (data_stage, calibrate, score, derive_mask):
        stage.run("mine", project)
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\n" + rows + "new film\t1\n")
    with pytest.raises(DataError, match=r"task mine: the train split changed after the data stage fingerprinted it"):
        train.run("mine", project)
    assert not (project / "artifacts" / "mine" / "adapter").exists()


def test_bad_label_stops_calibrate_naming_file_column_and_row(project, tmp_path):
    files = {
        "train.tsv": "sentence\tlabel\ngood film\t1\nbad film\tmaybe\n",
        "dev.tsv": "sentence\tlabel\ngood film\t1\n",
    }
    own_tsv_task(project, tmp_path / "data", files)
    from pipeline.steps import data as data_stage
    from taso.data import DataError

    with pytest.raises(DataError, match=r"train\.tsv: row 1, column 'label': unknown label 'maybe'"):
        data_stage.run("mine", project)
    assert not (project / "artifacts" / "mine").exists()


@pytest.mark.parametrize("method", ["taso", "lora"])
def test_a_missing_eval_file_stops_the_first_stage(project, tmp_path, method):
    # Before scoring and training, for a method that calibrates and for one that skips it alike:
    # nothing written, nothing registered.
    from mlflow import MlflowClient

    from pipeline.steps import data as data_stage
    from taso.data import DataError

    files = {"train.tsv": "sentence\tlabel\ngood film\t1\nbad film\t0\n"}  # no dev.tsv
    own_tsv_task(project, tmp_path / "data", files, train={"method": method})
    with pytest.raises(DataError, match=r"task mine: eval file .*dev\.tsv not found \(tasks\.mine\.splits\.eval\)"):
        data_stage.run("mine", project)
    assert not (project / "artifacts" / "mine").exists()
    assert MlflowClient(registry_uri=f"sqlite:///{project / 'mlflow.db'}").search_registered_models() == []


def test_a_version_whose_evaluation_fails_says_so_in_the_registry(project, tmp_path):
    from mlflow import MlflowClient

    from pipeline.steps import calibrate, derive_mask, evaluate, score, train
    from pipeline.steps import data as data_stage
    from taso.data import DataError

    data = tmp_path / "data"
    rows = "".join(f"{w} film\t{i % 2}\n" for i, w in enumerate(["good", "bad", "fine", "dull"] * 3))
    own_tsv_task(project, data, {split: "sentence\tlabel\n" + rows for split in ("train.tsv", "dev.tsv")})
    for stage in (data_stage, calibrate, score, derive_mask, train):
        stage.run("mine", project)
    (data / "dev.tsv").unlink()  # gone between training and evaluation
    with pytest.raises(DataError, match="dev.tsv not found"):
        evaluate.run("mine", project)
    tags = MlflowClient(registry_uri=f"sqlite:///{project / 'mlflow.db'}").get_model_version("taso-mine", "1").tags
    assert tags["evaluation_error"].startswith("DataError: task mine: eval file") and "metric.accuracy" not in tags
    assert not (project / "artifacts" / "mine" / "metrics.json").exists()


def test_tiny_tokenizer_knows_the_demo_words(tiny_model):
    from taso.pretrained import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    ids = tok("anna bought a red lamp in paris on monday.")["input_ids"]
    assert tok.unk_token_id not in ids


def test_promotion_is_the_promote_stages_decision_alone(project):
    from mlflow import MlflowClient

    from pipeline.steps import evaluate, promote, train

    run_all(project)
    art = project / "artifacts" / "entailment"
    # A tiny model after 4 steps may well have learned nothing (evaluate would say so); the
    # policy is under test here, so the first version's scores are set to ones that count.
    scores = json.loads((art / "metrics.json").read_text()) | {"accuracy": 0.75, "degenerate": None}
    (art / "metrics.json").write_text(json.dumps(scores))
    promote.run("entailment", project)
    first = json.loads((art / "promotion.json").read_text())
    assert first == {
        "policy": "if_better",
        "model": "taso-entailment",
        "version": 1,
        "metric": "accuracy",
        "value": 0.75,
        "champion_before": None,
        "champion": 1,
        "promoted": True,
        "degenerate": None,
    }
    client = MlflowClient(registry_uri=f"sqlite:///{project / 'mlflow.db'}")
    # A second version, evaluated but held back by the policy: evaluate alone moves nothing.
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tracking"]["promote"] = "never"
    raw["train"]["lr"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    train.run("entailment", project)
    evaluate.run("entailment", project)
    assert str(client.get_registered_model("taso-entailment").aliases["champion"]) == "1"
    assert "metric.accuracy" in client.get_model_version("taso-entailment", "2").tags
    promote.run("entailment", project)
    held = json.loads((art / "promotion.json").read_text())
    assert held["version"] == 2 and held["champion"] == 1 and not held["promoted"]

    # A third version that scores higher but that evaluate found degenerate is not promoted.
    raw["tracking"]["promote"] = "if_better"
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    train.run("entailment", project)
    evaluate.run("entailment", project)
    flag = "predicts the same class for every example"
    (art / "metrics.json").write_text(json.dumps(scores | {"accuracy": 0.9, "degenerate": flag}))
    promote.run("entailment", project)
    refused = json.loads((art / "promotion.json").read_text())
    assert refused["version"] == 3 and refused["champion"] == 1 and not refused["promoted"]
    assert refused["degenerate"] == flag


def test_evaluate_flags_a_model_that_predicts_one_class(project):
    from mlflow import MlflowClient

    from pipeline.steps import evaluate, promote

    run_all(project)
    # Whatever it learned, make the registered model answer one class: a zero classifier head
    # in the adapter's saved head weights (modules_to_save) gives equal logits, argmax 0.
    from safetensors.torch import load_file, save_file

    weights = project / "artifacts" / "entailment" / "adapter" / "adapter_model.safetensors"
    state = load_file(weights)
    state = {k: (v.zero_() if "classifier" in k else v) for k, v in state.items()}
    save_file(state, weights, metadata={"format": "pt"})
    evaluate.run("entailment", project)
    metrics = json.loads((project / "artifacts" / "entailment" / "metrics.json").read_text())
    assert metrics["top_prediction_share"] == 1.0
    assert metrics["degenerate"] == "predicts the same class for every example"
    client = MlflowClient(registry_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.get_model_version("taso-entailment", "1").tags["degenerate"] == metrics["degenerate"]
    promote.run("entailment", project)
    assert json.loads((project / "artifacts" / "entailment" / "promotion.json").read_text())["promoted"] is False


def test_the_mask_does_not_depend_on_the_rank_that_trains_on_it(project):
    import shutil

    from pipeline.steps import calibrate, derive_mask, score
    from pipeline.steps import data as data_stage

    for stage in (data_stage, calibrate, score, derive_mask):
        stage.run("entailment", project)
    mask_dir = project / "artifacts" / "entailment" / "mask"
    before = {f: (mask_dir / f).read_bytes() for f in ("mask.safetensors", "mask.json")}
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["rank"] = 8
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.rmtree(mask_dir)  # as DVC removes an out before its stage runs
    derive_mask.run("entailment", project)
    assert {f: (mask_dir / f).read_bytes() for f in before} == before
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["derive-mask"]["do"]
    assert not any(p.startswith("train.rank") for p in stage["params"])  # so DVC does not rerun it either


def test_the_same_params_twice_give_the_same_adapter_and_metrics(tmp_path, tiny_model, monkeypatch):
    # The demo's figures must repeat on one machine: every RNG (data order, head init, head
    # warm-up and its dropout, calibration sample, adapter init) follows params.seed.
    def once(name: str) -> tuple[bytes, dict]:
        root = make_project(tmp_path / name, tiny_model, monkeypatch)
        run_all(root)
        art = root / "artifacts" / "entailment"
        scores = json.loads((art / "metrics.json").read_text())
        scores.pop("eval_seconds")
        return (art / "adapter" / "adapter_model.safetensors").read_bytes(), scores

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert once("a") == once("b")


def pair_task_project(
    tmp_path, tiny_model, monkeypatch, task: dict, label=lambda score: score, **sections
) -> tuple[Path, Path]:
    """A project whose only task ``sim`` reads sentence pairs (``test_heads.pair_rows``, the score
    through ``label``) with ``task``'s keys (and ``sections`` merged into params.yaml's), run through
    every stage on a mean-pooling tiny model; returns (project, base model)."""
    import sys

    from test_heads import pair_rows, sentence_transformers_folder

    monkeypatch.setattr(sys, "path", list(sys.path))  # loading a pyfunc prepends its code folder
    base = sentence_transformers_folder(tiny_model, tmp_path / "st", "pooling_mode_mean_tokens", True)
    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", base, monkeypatch)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lines = "".join(f"{r['text']}\t{r['text_pair']}\t{label(r['label'])}\n" for r in pair_rows(2))
    for split in ("train.tsv", "dev.tsv"):
        (data_dir / split).write_text("s1\ts2\tscore\n" + lines)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    common = {"source": str(data_dir), "splits": {"train": "train.tsv", "eval": "dev.tsv"}, "mask_source": "own"}
    raw["tasks"] = {"sim": {**common, "text_fields": ["s1", "s2"], "label_field": "score", **task}}
    for section, values in sections.items():
        raw[section] |= values
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    run_all(root, "sim")
    return root, base


PAIRS = [["the film was good .", "the film was good ."], ["the film was good .", "the film was dull ."]]


def cosine_logits(base: Path, adapter: Path, task_type: str, pairs=PAIRS) -> torch.Tensor:
    """What the adapter's model, loaded by plain PEFT over the cosine head, gives ``pairs``."""
    from taso.pretrained import load_tokenizer, load_with_adapter

    loaded = load_with_adapter(str(base), adapter, task_type).eval()
    tok = load_tokenizer(str(base))
    enc = {**tok([a for a, _ in pairs], padding=True, return_tensors="pt")}
    enc |= {f"pair_{k}": v for k, v in tok([b for _, b in pairs], padding=True, return_tensors="pt").items()}
    with torch.no_grad():
        return loaded(**enc).logits


def test_a_similarity_task_trains_a_cosine_head_and_the_pyfunc_scores_pairs(tmp_path, tiny_model, monkeypatch):
    import mlflow
    import pandas as pd

    task = {"task_type": "regression", "metrics": ["pearson", "spearman"]}
    root, base = pair_task_project(tmp_path, tiny_model, monkeypatch, task)
    meta = json.loads((root / "artifacts" / "sim" / "adapter" / "taso.json").read_text())
    assert meta["head"] == "cosine" and meta["pooling"] == "mean+normalize"
    trained = json.loads((root / "artifacts" / "sim" / "train.json").read_text())
    assert trained["target_scale"] == pytest.approx([2.0, 3**0.5])
    scores = json.loads((root / "artifacts" / "sim" / "metrics.json").read_text())
    assert {"pearson", "spearman", "mse", "label_variance"} <= set(scores)

    model = mlflow.pyfunc.load_model("models:/taso-sim/1")
    got = model.predict(PAIRS)
    assert all(isinstance(v, float) for v in got)
    assert got == model.predict(pd.DataFrame({"text": [a for a, _ in PAIRS], "text_pair": [b for _, b in PAIRS]}))
    want = cosine_logits(base, root / "artifacts" / "sim" / "adapter", "regression").squeeze(-1).tolist()
    assert got == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="trained on sentence pairs"):
        model.predict(["the film was good ."])


def test_a_classified_pair_task_may_read_the_cosine_and_the_pyfunc_names_its_labels(tmp_path, tiny_model, monkeypatch):
    import mlflow

    from taso.importance import Importance

    task = {"labels": ["differ", "same"], "metrics": ["accuracy"], "head": "cosine"}
    same = lambda s: "same" if s == 5.0 else "differ"  # noqa: E731
    # No head warm-up before scoring: the head's closed-form start alone must give the encoder gradients.
    root, base = pair_task_project(tmp_path, tiny_model, monkeypatch, task, same, score={"head_warmup_steps": 0})
    imp = Importance.load(root / "artifacts" / "importance" / "sim" / "importance.safetensors")
    assert all(r.sum() > 0 for r in imp.rows.values())
    meta = json.loads((root / "artifacts" / "sim" / "adapter" / "taso.json").read_text())
    assert meta["head"] == "cosine" and meta["labels"] == ["differ", "same"]
    assert json.loads((root / "artifacts" / "sim" / "metrics.json").read_text())["accuracy"] == 1.0
    got = mlflow.pyfunc.load_model("models:/taso-sim/1").predict(PAIRS)
    assert got == ["same", "differ"]
    logits = cosine_logits(base, root / "artifacts" / "sim" / "adapter", "classification")
    assert logits.shape == (2, 2) and logits.argmax(-1).tolist() == [1, 0]


def test_the_importance_variants_reach_the_mask_through_the_stages(project):
    """score.statistic and mask.unit, set in params.yaml, change what score and derive-mask write and
    are recorded there: LoSiA's Ī ⊙ Ū in the importance map, whole heads in the mask."""
    from pipeline.steps import calibrate, derive_mask, score
    from pipeline.steps import data as data_stage
    from taso.importance import Importance
    from taso.masks import Mask

    art = project / "artifacts"
    data_stage.run("entailment", project)
    calibrate.run("entailment", project)
    score.run("entailment", project)
    plain = Importance.load(art / "importance" / "entailment" / "importance.safetensors")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["score"]["statistic"] = "sensitivity"
    raw["mask"] |= {"unit": "head", "rule": "rows_cols", "p": 0.5}  # 16 of 32 rows: one head of 16
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.rmtree(art / "importance" / "entailment")
    score.run("entailment", project)
    derive_mask.run("entailment", project)
    imp = Importance.load(art / "importance" / "entailment" / "importance.safetensors")
    assert imp.meta["statistic"] == "sensitivity" and plain.meta["statistic"] == "taylor"
    assert imp.digest != plain.digest
    meta = json.loads((art / "importance" / "entailment" / "meta.json").read_text())
    assert meta["params"]["score"]["statistic"] == "sensitivity"
    mask = Mask.load(art / "entailment" / "mask")
    assert mask.meta["unit"] == "head"
    width = imp.heads["bert.encoder.layer.0.attention.self.query"]
    for name in imp.heads:
        rows = mask.modules[name].rows
        assert len(rows) % width == 0 and (rows.view(-1, width) % width == torch.arange(width)).all()


def test_derive_mask_runs_under_torchrun_only_for_a_method_that_searches_its_region(project):
    """IMP's rounds of training split over ranks like the train stage; reading or deriving a mask does not."""
    from stages._args import _nproc
    from stages.derive_mask import splits

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["distributed"] = {"nproc": 2}
    for method, ranks in (("imp", 2), ("taso", 1), ("losia", 1)):
        raw["train"]["method"] = method
        (project / "params.yaml").write_text(yaml.safe_dump(raw))
        assert _nproc(project, splits) == ranks, method


def test_imp_search_on_two_ranks_writes_once_the_mask_one_process_finds(
    project, tmp_path_factory, tiny_model, monkeypatch
):
    """derive-mask under torchrun (distributed.nproc 2): both ranks train every round, rank 0 alone
    writes, and the region is the one a single process finds."""
    import os
    import subprocess
    import sys

    from pipeline.steps import data as data_stage
    from pipeline.steps import derive_mask

    # Dropout off: under torchrun it draws per rank, so ranks match one process only without it.
    model = shutil.copytree(tiny_model, project / "no-dropout")
    config = json.loads((model / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (model / "config.json").write_text(json.dumps(config))
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["model"]["base"] = str(model)
    raw["train"]["method"] = "imp"
    raw["imp"] = {**raw.get("imp", {}), "steps": 3}
    (project / "params.yaml").write_text(yaml.safe_dump(raw | {"distributed": {"nproc": 2}}))
    data_stage.run("entailment", project)
    env = os.environ | {"PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "stages.derive_mask", "--task", "entailment", "--root", str(project)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pipeline.steps.derive_mask: rank 1 of 2" in done.stderr
    assert not list(project.rglob("*.tmp*"))

    single = make_project(tmp_path_factory.mktemp("single"), tiny_model, monkeypatch)
    (single / "params.yaml").write_text(yaml.safe_dump(raw))
    data_stage.run("entailment", single)
    derive_mask.run("entailment", single)
    two, one = (json.loads((r / "artifacts/entailment/mask/mask.json").read_text()) for r in (project, single))
    assert two["digest"] == one["digest"]
    assert len(list((project / "artifacts/entailment/mask/rounds").iterdir())) == 2


def test_score_runs_in_one_process_where_its_statistic_does_not_split_over_ranks(project):
    """With distributed.nproc 2 the score stage relaunches under torchrun for a sum (taylor), but
    not for the sensitivity statistic, whose EMA runs over the batches in order; train still would."""
    from stages._args import _nproc
    from stages.score import splits

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["distributed"] = {"nproc": 2}
    for statistic, ranks in (("taylor", 2), ("sensitivity", 1)):
        raw["score"]["statistic"] = statistic
        (project / "params.yaml").write_text(yaml.safe_dump(raw))
        assert _nproc(project, splits) == ranks
        assert _nproc(project, lambda _params: True) == 2
