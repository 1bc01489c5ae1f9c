"""Core regions shared across tasks: compose, reuse with lineage, analyse, search the registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_stages import files, make_project

from pipeline.params import ParamsError, load_params
from taso.importance import Importance
from taso.masks import (
    Mask,
    ModuleMask,
    compose,
    cut_to_budget,
    derive_rows_cols,
    intersection,
    layer_profile,
    overlap,
    union,
)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"enc.layer.0.q": (8, 6), "enc.layer.1.q": (8, 6), "enc.layer.1.out": (6, 10)}


def importance(seed: int) -> Importance:
    g = torch.Generator().manual_seed(seed)
    return Importance(
        {n: torch.rand(o, generator=g) for n, (o, _) in SHAPES.items()},
        {n: torch.rand(i, generator=g) for n, (_, i) in SHAPES.items()},
    )


# --- library --------------------------------------------------------------------------------------


def test_cut_to_budget_keeps_the_highest_ranked_rows_and_columns():
    a, b, scores = derive_rows_cols(importance(0), 0.5), derive_rows_cols(importance(1), 0.5), importance(2)
    both = union([a, b])
    cut = cut_to_budget(both, a, scores)
    for n, m in cut.modules.items():
        assert (m.rows.numel(), m.cols.numel()) == (a.modules[n].rows.numel(), a.modules[n].cols.numel())
        assert set(m.rows.tolist()) <= set(both.modules[n].rows.tolist())
        dropped = set(both.modules[n].rows.tolist()) - set(m.rows.tolist())
        if dropped:  # everything kept ranks at least as high as everything dropped
            assert min(scores.rows[n][m.rows.long()]) >= max(scores.rows[n][list(dropped)])
    assert cut.trainable_params(1) == a.trainable_params(1)
    assert cut.meta["cut_to"] == a.digest
    small = intersection([a, b])  # already within budget: unchanged
    assert cut_to_budget(small, a, scores).digest == small.digest


def test_overlap_is_symmetric_with_ones_on_the_diagonal():
    masks = {f"t{i}": derive_rows_cols(importance(i), 0.5) for i in range(3)}
    report = overlap(masks)
    pairs = report["overall"]
    for a in masks:
        assert pairs[a][a] == {"rows": 1.0, "cols": 1.0}
        for b in masks:
            assert pairs[a][b] == pairs[b][a]
            assert 0 <= pairs[a][b]["rows"] <= 1
    assert sorted(report["modules"]) == ["t0|t1", "t0|t2", "t1|t2"]
    assert set(report["modules"]["t0|t1"]) == set(SHAPES)
    same = overlap({"x": masks["t0"], "y": masks["t0"]})["overall"]
    assert same["x"]["y"] == {"rows": 1.0, "cols": 1.0}


def test_layer_profile_sums_kept_rows_and_columns_per_layer():
    mask = Mask(
        {
            "enc.layer.0.q": ModuleMask([0, 1], [0], (8, 6)),
            "enc.layer.1.q": ModuleMask([0], [0, 1, 2], (8, 6)),
            "enc.layer.1.out": ModuleMask([], [], (6, 10)),
        }
    )
    assert layer_profile(mask) == [
        {"layer": 0, "rows": 2 / 8, "cols": 1 / 6},
        {"layer": 1, "rows": 1 / 14, "cols": 3 / 16},
    ]


def test_compose_rejects_weighted_masks():
    with pytest.raises(ValueError, match="weighted composes importance maps"):
        compose([derive_rows_cols(importance(0), 0.5)], "weighted")


# --- params -------------------------------------------------------------------------------------


def write(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        raw[key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize(
    ("compositions", "tasks_patch", "message"),
    [
        ({"u": {"op": "union", "of": ["nope"]}}, {}, "'nope' is not a task .*remove it from compositions.u.of, or set"),
        ({"u": {"op": "weighted", "of": ["sentiment", "file:m"]}}, {}, "'file:m' is a mask; a weighted composition"),
        ({"u": {"op": "union", "of": ["sentiment"], "weights": [1.0]}}, {}, "weights and p apply to op: weighted"),
        ({"u": {"op": "weighted", "of": ["sentiment", "topic"], "weights": [1.0]}}, {}, "one value per entry"),
        ({"topic": {"op": "union", "of": ["sentiment"]}}, {}, "compositions.topic: a task has that name"),
        ({}, {"topic": "composition:missing"}, "tasks.topic.mask_source: no composition 'missing'"),
        (
            {"u": {"op": "union", "of": ["sentiment", "topic"]}},
            {"topic": "composition:u"},
            "task 'topic' reuses a mask (composition:u); remove 'topic' from compositions.u.of, or compose that",
        ),
        ({"u": {"op": "union", "of": []}}, {}, "compositions.u.of"),
        ({"u": {"op": "union", "of": ["composition:v"]}}, {}, "'composition:v' is not a task, a file:<path>"),
        ({"a.b": {"op": "union", "of": ["topic"]}}, {}, "compositions.a.b: use letters, digits"),
        ({"../x": {"op": "union", "of": ["topic"]}}, {}, "use letters, digits"),
    ],
)
def test_bad_compositions_name_the_key(tmp_path, compositions, tasks_patch, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for task, source in tasks_patch.items():
        raw["tasks"][task]["mask_source"] = source
    path = write(tmp_path, compositions=compositions, tasks=raw["tasks"])
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_params(path)


def test_reserved_task_names_and_elementwise_weighting_are_refused(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    tasks = {"importance": raw["tasks"]["topic"], **raw["tasks"]}
    with pytest.raises(ParamsError, match="tasks.importance: 'importance' is reserved for artifacts/importance/"):
        load_params(write(tmp_path, tasks=tasks))
    comps = {"w": {"op": "weighted", "of": ["sentiment", "topic"]}}
    with pytest.raises(ParamsError, match="compositions.w: a weighted composition merges row and column"):
        load_params(write(tmp_path, compositions=comps, mask={"rule": "elementwise", "p": 0.25}))


def test_default_params_compose_two_demo_tasks():
    params = load_params(ROOT / "params.yaml")
    assert params.composition("demo-union").of == ["sentiment", "topic"]
    with pytest.raises(ParamsError, match="no such composition; compositions in params.yaml: demo-union"):
        params.composition("x")


# --- stages on a tiny BERT ------------------------------------------------------------------------


@pytest.fixture
def two_tasks(tmp_path, tiny_model, monkeypatch) -> Path:
    """The stage-test project with two demo tasks scored and their masks derived, and a union of them."""
    from pipeline.steps import calibrate, derive_mask, score
    from pipeline.steps import data as data_stage

    project = make_project(tmp_path, tiny_model, monkeypatch)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tasks"]["topic"] = {**raw["tasks"]["entailment"], "source": "demo:topic", "text_fields": ["text"]}
    raw["tasks"]["topic"] |= {"labels": ["food", "science", "sports", "travel"], "metrics": ["accuracy"]}
    raw["compositions"] = {"shared": {"op": "union", "of": ["entailment", "topic"]}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    for task in ("entailment", "topic"):
        for stage in (data_stage, calibrate, score, derive_mask):
            stage.run(task, project)
    return project


def set_params(root: Path, **changes) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw.update(changes)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def test_compose_stage_writes_the_union_with_its_lineage(two_tasks):
    from mlflow import MlflowClient

    from pipeline.steps import compose as stage

    out = stage.run("shared", two_tasks)
    art = two_tasks / "artifacts"
    assert out == art / "compositions" / "shared" / "mask"
    assert files(out) == ["mask.json", "mask.safetensors", "meta.json"]
    own = {t: Mask.load(art / t / "mask") for t in ("entailment", "topic")}
    composed = Mask.load(out)
    assert composed.digest == union(list(own.values())).digest
    lineage = json.loads(composed.meta["inputs"])
    assert lineage == [{"ref": t, "digest": own[t].digest} for t in ("entailment", "topic")]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "compose" and meta["lineage"] == lineage and meta["outputs"]["mask"] == composed.digest
    # Deterministic: composing again gives the same digest.
    shutil.rmtree(out)
    assert Mask.load(stage.run("shared", two_tasks)).digest == composed.digest
    client = MlflowClient(f"sqlite:///{two_tasks / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("taso").experiment_id], "tags.`taso.stage` = 'compose'", max_results=5
    )
    assert runs and json.loads(runs[0].data.tags["taso.composition.inputs"]) == lineage
    assert "mask" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_weighted_composition_merges_importance(two_tasks):
    from pipeline.steps import compose as stage
    from taso.masks import derive_mask, merge_importance

    tasks = ("entailment", "topic")
    imps = [Importance.load(two_tasks / "artifacts" / "importance" / t / "importance.safetensors") for t in tasks]
    digests = {}
    for weights in ([1.0, 1.0], [4.0, 1.0]):
        set_params(two_tasks, compositions={"w": {"op": "weighted", "of": list(tasks), "weights": weights, "p": 0.5}})
        composed = Mask.load(stage.run("w", two_tasks))
        rule = load_params(two_tasks / "params.yaml").mask.rule  # the project's rule, at the composition's p
        assert composed.digest == derive_mask(merge_importance(imps, weights), rule, 0.5).digest
        assert [e["digest"] for e in json.loads(composed.meta["inputs"])] == [i.digest for i in imps]
        digests[tuple(weights)] = composed.digest
    assert len(set(digests.values())) == 2  # the weights matter


def test_a_composition_can_take_a_registered_mask(two_tasks):
    from mlflow import MlflowClient

    from pipeline.steps import compose, train

    train.run("entailment", two_tasks)  # registers taso-entailment version 1, alias candidate
    ref = "registry:taso-entailment@candidate"
    set_params(two_tasks, compositions={"mixed": {"op": "union", "of": ["topic", ref]}})
    composed = Mask.load(compose.run("mixed", two_tasks))
    own = {t: Mask.load(two_tasks / "artifacts" / t / "mask") for t in ("entailment", "topic")}
    assert composed.digest == union([own["topic"], own["entailment"]]).digest
    lineage = json.loads(composed.meta["inputs"])
    assert lineage == [
        {"ref": "topic", "digest": own["topic"].digest},
        {"ref": ref, "digest": own["entailment"].digest},
    ]
    client = MlflowClient(f"sqlite:///{two_tasks / 'mlflow.db'}")
    [run] = client.search_runs(
        [client.get_experiment_by_name("taso").experiment_id], "tags.`taso.stage` = 'compose'", max_results=1
    )
    assert run.data.tags["taso.input.1"] == own["entailment"].digest


def test_a_task_trains_on_a_composition_and_its_version_carries_the_lineage(two_tasks):
    from mlflow import MlflowClient

    from pipeline.steps import calibrate, compose, derive_mask, score, train
    from pipeline.steps import data as data_stage

    raw = yaml.safe_load((two_tasks / "params.yaml").read_text())
    raw["tasks"]["newcomer"] = {**raw["tasks"]["entailment"], "mask_source": "composition:shared"}
    (two_tasks / "params.yaml").write_text(yaml.safe_dump(raw))
    published = Mask.load(compose.run("shared", two_tasks))
    for stage in (data_stage, calibrate, score, derive_mask, train):
        stage.run("newcomer", two_tasks)
    skipped = two_tasks / "artifacts" / "importance" / "newcomer"
    assert files(skipped) == ["meta.json"]  # the score stage did not score
    assert "not scored: tasks.newcomer.mask_source is composition:shared" in (skipped / "meta.json").read_text()
    assert (two_tasks / "artifacts" / "newcomer" / "importance_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    mask = Mask.load(two_tasks / "artifacts" / "newcomer" / "mask")
    assert mask.digest == published.digest
    assert mask.meta["source"] == "composition:shared" and mask.meta["source_digest"] == published.digest
    client = MlflowClient(f"sqlite:///{two_tasks / 'mlflow.db'}")
    [version] = client.search_model_versions("name = 'taso-newcomer'")
    assert version.tags["mask_source"] == "composition:shared"
    assert version.tags["mask_source_digest"] == published.digest == version.tags["mask_digest"]
    run = client.get_run(version.run_id)
    assert run.data.tags["taso.mask_source_digest"] == published.digest


def test_analyze_writes_overlap_and_layer_profiles(two_tasks):
    from pipeline.steps import analyze

    out = analyze.run(two_tasks)
    assert files(out) == ["layers.csv", "layers.png", "meta.json", "overlap.json", "overlap.png"]
    report = json.loads((out / "overlap.json").read_text())
    assert report["tasks"] == ["entailment", "topic"]
    own = {t: Mask.load(two_tasks / "artifacts" / t / "mask") for t in report["tasks"]}
    from taso.masks import compare

    assert report["overall"]["entailment"]["topic"] == compare(own["entailment"], own["topic"])["overall"]
    assert set(report["modules"]["entailment|topic"]) == set(own["topic"].modules)
    rows = (out / "layers.csv").read_text().splitlines()
    assert rows[0] == "task,layer,rows,cols" and len(rows) == 1 + 2 * 2  # two tasks, two layers


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_composes_folders_and_importance_maps(two_tasks, monkeypatch):
    from pipeline.cli import main

    monkeypatch.chdir(two_tasks)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["mask", "compose", "--op", "intersection", "artifacts/entailment/mask", "artifacts/topic/mask", "--out", "x"],
    )
    assert result.exit_code == 0, result.output
    own = [Mask.load(two_tasks / "artifacts" / t / "mask") for t in ("entailment", "topic")]
    assert Mask.load(two_tasks / "x").digest == intersection(own).digest
    assert Mask.load(two_tasks / "x").digest in result.output
    result = runner.invoke(
        main,
        ["mask", "compose", "--op", "weighted", "artifacts/importance/entailment", "artifacts/importance/topic"]
        + ["--weights", "2,1", "--p", "0.25", "--out", "w"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(Mask.load(two_tasks / "w").meta["weights"]) == [2.0, 1.0]
    result = runner.invoke(main, ["mask", "compose", "--op", "union", "x", "--weights", "1", "--out", "z"])
    assert result.exit_code == 2 and "--weights, --p and --unit apply to --op weighted only" in result.output
    result = runner.invoke(main, ["mask", "compose", "--op", "union", "x", "--unit", "head", "--out", "z"])
    assert result.exit_code == 2 and "--unit apply to --op weighted only" in result.output
    result = runner.invoke(main, ["mask", "compose", "--op", "weighted", "artifacts/importance/topic", "--out", "z"])
    assert result.exit_code == 2 and "--op weighted needs --p" in result.output
    assert not (two_tasks / "z").exists()
    (two_tasks / "mine").mkdir()
    (two_tasks / "mine" / "keep.txt").write_text("mine")
    args = ["mask", "compose", "--op", "union", "x", "--out", "mine"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "mine already exists and holds files taso did not write" in result.output
    assert (two_tasks / "mine" / "keep.txt").read_text() == "mine"
    assert runner.invoke(main, args + ["--force"]).exit_code == 0
    assert Mask.load(two_tasks / "mine").digest == intersection(own).digest
    result = runner.invoke(main, ["mask", "compose", "--op", "union", "artifacts/nope/mask", "--out", "y"])
    assert result.exit_code == 1 and "artifacts/nope/mask: no such mask folder or file" in result.output
    assert not (two_tasks / "y").exists()


def test_composing_an_unscored_task_says_which_stage_to_run(tmp_path):
    from pipeline import sources
    from taso.io import ArtifactError

    params = load_params(ROOT / "params.yaml")
    with pytest.raises(
        ArtifactError, match=r"task 'sentiment' has no importance map yet; run `dvc repro score@sentiment`"
    ):
        sources.composition(params, tmp_path, "demo-union")


def test_rederiving_gives_the_same_bytes_so_dvc_retrains_nothing(two_tasks):
    # DVC deletes an out before its stage reruns; the same inputs must write the same folder
    # (meta.json included), or every rerun upstream would retrain the task.
    import shutil

    from pipeline.steps import derive_mask

    folder = two_tasks / "artifacts" / "topic" / "mask"
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    shutil.rmtree(folder)
    derive_mask.run("topic", two_tasks)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    assert "code_version" not in Mask.load(folder).meta  # the version is meta.json's, not the mask's


def test_code_version_follows_the_code_not_the_commit(tmp_path):
    import subprocess

    from pipeline.meta import code_version

    (tmp_path / "taso").mkdir()
    (tmp_path / "taso" / "a.py").write_text("x = 1\n")
    first = code_version(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "README.md").write_text("a commit that leaves the code alone\n")
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "docs"], cwd=tmp_path, check=True)
    assert code_version(tmp_path) == first
    (tmp_path / "taso" / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) != first
