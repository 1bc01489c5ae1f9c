"""End to end: the real `dvc repro` on a copy of this repo, with the real MiniLM and a sqlite MLflow store.

One module-scoped run (a few training steps per task) feeds every test here, so the suite
pays for the pipeline once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from demo import named  # noqa: E402  (dvc exp show --json: the experiments of a name; README's figures use it too)

PROJECT_FILES = [
    "taso",
    "pipeline",
    "stages",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
    "artifacts/compositions/README.md",
]
TASKS = ("sentiment", "entailment")


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def always(repo: Path) -> set[str]:
    """The stages every ``dvc repro`` runs: the params check and each task's data fingerprint."""
    tasks = yaml.safe_load((repo / "params.yaml").read_text())["tasks"]
    return {"check-params"} | {f"data@{t}" for t in tasks}


def ran(out: str) -> set[str]:
    """The stages a ``dvc repro`` output says it ran."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def copy_project(repo: Path) -> Path:
    """The files of this project that a run needs, copied into ``repo`` (no artifacts, no caches)."""
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        elif src.exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    return repo


def tiny_params(raw: dict) -> dict:
    raw["tasks"] = {k: {**raw["tasks"][k], "max_train": 48, "max_eval": 32} for k in TASKS}
    raw["compositions"] = {"demo-union": {"op": "union", "of": list(TASKS)}}
    raw["calibrate"]["n"] = 16
    raw["train"]["max_steps"] = 3
    raw["train"]["checkpoint_every"] = 2
    return raw


def project_env(**extra: str) -> dict:
    """This environment for a project's commands: this venv first on PATH, offline, no inherited
    MLflow store or DVC settings, a fixed git identity; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    return env | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        **extra,
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh git repo holding the project, after one `dvc repro`."""
    repo = copy_project(tmp_path_factory.mktemp("project"))
    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env()
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(repo.parent / "dvc-site")], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "init"], repo, env)
    first = sh(["dvc", "repro"], repo, env)
    return repo, env, first


def test_repro_writes_every_declared_out(project):
    repo, _, _ = project
    for task in TASKS:
        d = repo / "artifacts" / task
        assert sorted(p.name for p in (d / "calibration").iterdir()) == ["calibration.jsonl", "meta.json"]
        imp = repo / "artifacts" / "importance" / task
        assert sorted(p.name for p in imp.iterdir()) == ["importance.safetensors", "meta.json"]
        assert sorted(p.name for p in (d / "mask").iterdir()) == ["mask.json", "mask.safetensors", "meta.json"]
        assert {"adapter_config.json", "adapter_model.safetensors", "meta.json", "taso.json"} <= {
            p.name for p in (d / "adapter").iterdir()
        }
        # TASO does not move its region: subnet/ says where it is, and the history has no rows.
        assert "does not move its region" in json.loads((d / "subnet" / "meta.json").read_text())["skipped"]
        assert (d / "subnet_history.csv").read_text().splitlines() == [
            "step,layer,module,candidate,block_mass,row_overlap,col_overlap"
        ]
        for f in ("importance_heatmap.png", "train.json", "train_curve.csv", "metrics.json"):
            assert (d / f).is_file(), f
        assert (d / "importance_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len((d / "calibration" / "calibration.jsonl").read_text().splitlines()) == 16
        meta = json.loads((d / "mask" / "meta.json").read_text())
        assert meta["stage"] == "derive-mask" and meta["task"] == task and meta["inputs"]["importance"]
        assert not (repo / "checkpoints" / task).exists() or not any((repo / "checkpoints" / task).iterdir())
    composed = repo / "artifacts" / "compositions" / "demo-union" / "mask"
    assert sorted(p.name for p in composed.iterdir()) == ["mask.json", "mask.safetensors", "meta.json"]
    lineage = json.loads(json.loads((composed / "mask.json").read_text())["meta"]["inputs"])
    assert [e["ref"] for e in lineage] == list(TASKS)
    for entry in lineage:
        assert (
            entry["digest"]
            == json.loads((repo / "artifacts" / entry["ref"] / "mask" / "mask.json").read_text())["digest"]
        )
    analysis = repo / "artifacts" / "analysis"
    assert {"overlap.png", "overlap.json", "layers.png", "layers.csv"} <= {p.name for p in analysis.iterdir()}


def test_metrics_show_lists_every_task(project):
    repo, env, _ = project
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    files = next(iter(shown.values()))["data"]
    for task in TASKS:
        metrics = files[f"artifacts/{task}/metrics.json"]["data"]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n_examples"] == 32
        assert files[f"artifacts/{task}/train.json"]["data"]["steps"] == 3


def test_second_repro_reruns_nothing(project):
    repo, env, _ = project
    out = sh(["dvc", "repro"], repo, env).stdout
    assert ran(out) == always(repo)  # they write nothing new, so nothing downstream reruns


def test_mlflow_runs_and_registry(project):
    repo, env, _ = project
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("taso")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    stages = {(r.data.tags["taso.stage"], r.data.tags["taso.task"]) for r in runs}
    per_task = {(s, t) for s in ("calibrate", "score", "derive-mask", "train", "evaluate", "promote") for t in TASKS}
    assert stages == per_task | {("compose", "demo-union"), ("analyze", "all")}
    train_run = next(
        r for r in runs if r.data.tags["taso.stage"] == "train" and r.data.tags["taso.task"] == "sentiment"
    )
    assert train_run.data.tags["taso.input.mask"] and train_run.data.tags["taso.output.adapter"]
    assert train_run.data.params["train.rank"] == str(
        yaml.safe_load((repo / "params.yaml").read_text())["train"]["rank"]
    )
    assert len(client.get_metric_history(train_run.info.run_id, "train_loss")) >= 1
    for task in TASKS:
        # A few steps on 48 examples may leave a model that learned nothing: evaluate says so and
        # promote leaves it alone, so a person promotes it, as `taso registry promote` lets them.
        scores = json.loads((repo / "artifacts" / task / "metrics.json").read_text())
        decision = json.loads((repo / "artifacts" / task / "promotion.json").read_text())
        assert decision["promoted"] is (scores["degenerate"] is None)
        assert decision["degenerate"] == scores["degenerate"]
        if not decision["promoted"]:
            assert "champion" not in client.get_registered_model(f"taso-{task}").aliases
            sh(["taso", "registry", "promote", f"taso-{task}", "1", "--alias", "champion"], repo, env)
        version = client.get_model_version_by_alias(f"taso-{task}", "champion")
        assert str(version.version) == "1"
        assert set(client.get_registered_model(f"taso-{task}").aliases) == {"candidate", "champion"}
        assert (
            version.tags["mask_digest"]
            == json.loads((repo / "artifacts" / task / "mask" / "mask.json").read_text())["digest"]
        )
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/taso-sentiment@champion")
    assert set(model.predict(["the film was not good.", "the film was great."])) <= {"negative", "positive"}


def test_pull_champion_loads_in_peft(project, tmp_path):
    repo, env, _ = project
    import torch
    from peft import PeftModel

    from taso.pretrained import load_model

    dest = tmp_path / "champion"
    sh(["taso", "registry", "pull", "models:/taso-sentiment@champion", "--dest", str(dest)], repo, env)
    model = PeftModel.from_pretrained(load_model("minilm", num_labels=2), str(dest))
    ids = torch.tensor([[101, 2023, 2143, 2001, 2025, 2204, 1012, 102]])
    assert model(input_ids=ids).logits.shape == (1, 2)


def test_param_change_reruns_only_that_task(project):
    repo, env, _ = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tasks"]["entailment"]["max_train"] = 40
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro"], repo, env).stdout
    # The stages that read every task's map rerun (in seconds). demo-union names entailment, so
    # it changes, and every derive-mask reads the composed masks: sentiment's reruns, writes the
    # same bytes, and so its training and evaluation do not rerun.
    cross = {"compose@demo-union", "analyze", "derive-mask@sentiment"} | always(repo)
    stages = ("calibrate", "score", "derive-mask", "train", "evaluate", "promote")
    assert ran(out) == {f"{s}@entailment" for s in stages} | cross


def test_bad_params_fail_the_stage_with_the_key_path(project):
    repo, env, _ = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mask"]["p"] = 1.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = sh(["dvc", "repro", "derive-mask@sentiment"], repo, env, check=False)
        assert proc.returncode != 0
        assert "mask.p: Input should be less than or equal to 1" in proc.stderr + proc.stdout
    finally:
        params["mask"]["p"] = 0.25
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_misspelled_section_fails_repro_even_when_all_is_up_to_date(project):
    repo, env, _ = project
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("\ncalibrate:", "\ncalibration:"))
    try:
        proc = sh(["dvc", "repro"], repo, env, check=False)
        assert proc.returncode != 0
        assert "params.yaml: calibration: unknown key" in proc.stdout + proc.stderr
    finally:
        (repo / "params.yaml").write_text(text)


def test_exp_run_with_set_param(project):
    repo, env, _ = project
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "after repro"], repo, env)
    sh(["dvc", "exp", "run", "-S", "mask.p=0.5", "-n", "dense-half"], repo, env)
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env).stdout)
    text = json.dumps(shown)
    assert "dense-half" in text and '"p": 0.5' in text
    # The experiment's own metrics, not only its params: metrics files are git-tracked outs.
    (exp,) = list(named(shown, "dense-half"))
    metrics = exp["data"]["metrics"]
    assert {"artifacts/sentiment/metrics.json", "artifacts/sentiment/train.json"} <= set(metrics)
    assert "accuracy" in metrics["artifacts/sentiment/metrics.json"]["data"]
    mask = json.loads((repo / "artifacts" / "sentiment" / "mask" / "mask.json").read_text())
    assert mask["meta"]["p"] == "0.5"


def test_a_new_task_trains_on_the_published_champion_mask(project):
    """Acceptance of mask reuse: publish (the runs above), then train a new task on `registry:...@champion`."""
    from mlflow import MlflowClient

    from taso.masks import Mask

    repo, env, _ = project
    # README's workflow: commit what ran, then add a task. The commit changes no stage's inputs.
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "what ran", "--allow-empty"], repo, env)
    assert ran(sh(["dvc", "repro"], repo, env).stdout) == always(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    source = "registry:taso-sentiment@champion"
    params["tasks"]["reuse"] = {**params["tasks"]["sentiment"], "mask_source": source}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("taso-sentiment", "champion")
    published, pinned = champion.tags["mask_digest"], f"models:/taso-sentiment/{champion.version}"

    out = sh(["dvc", "repro"], repo, env).stdout
    stages = ("calibrate", "score", "derive-mask", "train", "evaluate", "promote")
    # Only the new task, and what reads every task's map (the analysis; the composition, whose
    # mask comes out byte for byte the same, so no task that might train on it reruns).
    assert ran(out) == {f"{s}@reuse" for s in stages} | {"compose@demo-union", "analyze"} | always(repo)
    assert sorted(p.name for p in (repo / "artifacts" / "importance" / "reuse").iterdir()) == ["meta.json"]
    mask = Mask.load(repo / "artifacts" / "reuse" / "mask")
    assert mask.digest == published and mask.meta["source"] == source and mask.meta["source_digest"] == published
    assert mask.meta["source_version"] == pinned  # what the alias named then, should it move later
    version = client.get_model_version_by_alias("taso-reuse", "candidate")
    assert version.tags["mask_source"] == source and version.tags["mask_source_digest"] == published
    assert version.tags["mask_source_version"] == pinned
    run = client.get_run(version.run_id)
    assert run.data.tags["taso.mask_source"] == source and run.data.tags["taso.mask_source_digest"] == published
    exp = client.get_experiment_by_name("taso").experiment_id
    [derive] = client.search_runs([exp], "tags.`taso.stage` = 'derive-mask' and tags.`taso.task` = 'reuse'")
    assert derive.data.tags["taso.mask_source_digest"] == published


def test_an_edited_data_file_reruns_what_reads_it_and_nothing_else(project):
    repo, env, _ = project
    data = repo / "data" / "mine"
    data.mkdir(parents=True)
    lines = [f"{w} film\t{i % 2}\n" for i, w in enumerate(["a good", "a bad", "a fine", "a dull"] * 6)]
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_text("sentence\tlabel\n" + "".join(lines))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tasks"]["mine"] = {
        **{k: params["tasks"]["sentiment"][k] for k in ("metrics", "max_train", "max_eval", "mask_source")},
        "source": "data/mine",
        "splits": {"train": "train.tsv", "eval": "dev.tsv"},
        "text_fields": ["sentence"],
        "labels": ["0", "1"],
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ("calibrate", "score", "derive-mask", "train", "evaluate", "promote")
    assert {f"{s}@mine" for s in stages} <= ran(sh(["dvc", "repro"], repo, env).stdout)

    # The eval file: only what scores on it.
    (data / "dev.tsv").write_text("sentence\tlabel\n" + "".join(lines) + "a great film\t1\n")
    assert ran(sh(["dvc", "repro"], repo, env).stdout) == {"evaluate@mine", "promote@mine"} | always(repo)
    assert json.loads((repo / "artifacts" / "mine" / "metrics.json").read_text())["n_examples"] == 25
    # The train file: everything that reads the train split, seen by `dvc status` once the data
    # stage has fingerprinted the change (the stages after it are not run here).
    (data / "train.tsv").write_text("sentence\tlabel\n" + "".join(lines[::-1]))
    sh(["dvc", "repro", "data@mine"], repo, env)
    changed = set(json.loads(sh(["dvc", "status", "--json"], repo, env).stdout))
    assert changed - always(repo) == {"calibrate@mine", "score@mine", "derive-mask@mine", "train@mine"}


# Last: the experiment leaves LoSiA's outs and params in the workspace.
def test_exp_run_with_losia_compares_the_two_methods(project):
    repo, env, _ = project
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["tasks"] = {t: raw["tasks"][t] for t in TASKS}  # the demo tasks (a task reusing a mask needs losia.start: mask)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "before losia", "--allow-empty"], repo, env)
    out = sh(["dvc", "exp", "run", "-S", "train.method=losia", "-n", "losia-demo"], repo, env).stdout
    assert {f"train@{t}" for t in TASKS} <= ran(out)
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env).stdout)
    (exp,) = list(named(shown, "losia-demo"))
    assert exp["data"]["params"]["params.yaml"]["data"]["train"]["method"] == "losia"
    trained = exp["data"]["metrics"]["artifacts/sentiment/train.json"]["data"]
    assert trained["method"] == "losia" and trained["method_details"]["period"] >= 1
    assert "accuracy" in exp["data"]["metrics"]["artifacts/sentiment/metrics.json"]["data"]
    workspace = shown[0]["rev"] == "workspace" and shown[0]
    assert workspace  # the baseline beside it, trained by TASO
    art = repo / "artifacts" / "sentiment"  # the workspace holds the experiment's outs after exp run
    for folder in (art / "calibration", art / "mask", repo / "artifacts" / "importance" / "sentiment"):
        assert "finds its region while training" in json.loads((folder / "meta.json").read_text())["skipped"]
    assert sorted(p.name for p in (art / "subnet").iterdir()) == ["mask.json", "mask.safetensors", "meta.json"]
    assert len((art / "subnet_history.csv").read_text().splitlines()) > 1


def test_exp_run_with_imp_prunes_in_rounds_and_its_region_serves_another_task(project):
    repo, env, _ = project
    # mask.p as committed (an earlier experiment left 0.5 in the workspace): q 0.5 reaches it in 2 rounds.
    imp = ["-S", "train.method=imp", "-S", "imp.steps=2", "-S", "mask.p=0.25", "-n", "imp-demo"]
    out = sh(["dvc", "exp", "run", *imp], repo, env).stdout
    assert {f"derive-mask@{t}" for t in TASKS} <= ran(out)
    art = repo / "artifacts" / "sentiment"
    skipped = json.loads((repo / "artifacts" / "importance" / "sentiment" / "meta.json").read_text())["skipped"]
    assert "finds the region by its search in derive-mask" in skipped  # no importance pass: the rounds replace it
    assert [line.split(",")[0] for line in (art / "imp_rounds.csv").read_text().splitlines()] == ["index", "1", "2"]
    assert {p.name for p in (art / "mask" / "rounds").iterdir()} == {"round-1", "round-2"}
    # IMP's region, published with the version, is a mask source like TASO's.
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["tasks"]["borrower"] = {**raw["tasks"]["sentiment"], "mask_source": "registry:taso-sentiment@candidate"}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert {"derive-mask@borrower", "train@borrower"} <= ran(sh(["dvc", "repro"], repo, env).stdout)
    borrowed = json.loads((repo / "artifacts" / "borrower" / "mask" / "mask.json").read_text())
    assert borrowed["meta"]["rule"] == "imp-global"
