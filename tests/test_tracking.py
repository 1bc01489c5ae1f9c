"""MLflow tracking of stage runs, against a temporary sqlite store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest

from pipeline import tracking


def _git_repo(path: Path) -> str:
    path.mkdir()
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    (path / "f").write_text("x")
    subprocess.run(["git", "add", "f"], cwd=path, check=True)
    subprocess.run(["git", *env, "commit", "-q", "-m", "init"], cwd=path, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()


def test_tracking_uri_defaults_to_sqlite_in_root_and_honours_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path / "x" / "..") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    assert tracking.sqlite_path("http://127.0.0.1:5000") is None
    assert tracking.sqlite_path("sqlite:////a/b.db") == Path("/a/b.db")


def test_configure_points_mlflow_at_the_store(store, tmp_path):
    assert tracking.configure(tmp_path) == store
    assert mlflow.get_tracking_uri() == store and mlflow.get_registry_uri() == store


def test_git_commit(tmp_path):
    assert tracking.git_commit(tmp_path) is None
    head = _git_repo(tmp_path / "repo")
    assert tracking.git_commit(tmp_path / "repo") == head


def test_flatten_nests_with_dots_and_respects_the_value_limit():
    flat = tracking.flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None, "long": "x" * 2000, "empty": {}})
    assert flat["a.b.c"] == "1" and flat["a.d"] == "[1, 2]" and flat["e"] == "None" and flat["empty"] == "{}"
    assert len(flat["long"]) == tracking.PARAM_VALUE_LIMIT <= 500 and flat["long"].endswith("...")


def test_stage_run_logs_tags_params_metrics_and_outputs(store, tmp_path, monkeypatch):
    root = tmp_path / "repo"
    head = _git_repo(root)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-123")
    params = {"train": {"lr": 0.01, "rank": 1, "targets": ["query", "value"]}, "note": "y" * 900}
    (tmp_path / "curve.csv").write_text("step,loss\n1,0.5\n")
    with tracking.stage_run(root, stage="train", task="rte", params=params, inputs={"mask": "abc"}) as run:
        assert mlflow.active_run().info.run_id == run.run_id
        run.log_metrics({"train_loss": 0.9}, step=1)
        run.log_metrics({"train_loss": 0.5, "steps": 2}, step=2)
        run.log_outputs({"adapter": "def"})
        run.set_tags({"taso.registered_version": 3})
        run.log_artifact(tmp_path / "curve.csv")
    assert mlflow.active_run() is None

    client = mlflow.MlflowClient()
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "train@rte"
    tags = got.data.tags
    assert tags["taso.task"] == "rte" and tags["taso.stage"] == "train" and tags["taso.dvc_exp"] == "exp-123"
    assert tags["mlflow.source.git.commit"] == head
    assert tags["taso.input.mask"] == "abc" and tags["taso.output.adapter"] == "def"
    assert tags["taso.registered_version"] == "3"
    assert got.data.params["train.lr"] == "0.01" and got.data.params["train.targets"] == "['query', 'value']"
    assert len(got.data.params["note"]) <= 500
    history = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5)]
    assert got.data.metrics["steps"] == 2.0
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["curve.csv"]
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == "taso"
    # Artifacts sit beside the sqlite file, not under the working directory.
    assert exp.artifact_location == str(tmp_path / "mlruns")


def test_stage_run_outside_git_and_dvc(store, tmp_path):
    with tracking.stage_run(tmp_path, stage="score", task="sst2", params={}, inputs={}) as run:
        pass
    tags = mlflow.MlflowClient().get_run(run.run_id).data.tags
    assert tags["taso.dvc_exp"] == "workspace" and "mlflow.source.git.commit" not in tags


@pytest.mark.parametrize(("error", "status"), [(ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_stage_run_that_raises_ends_failed_and_reraises(store, tmp_path, error, status):
    with pytest.raises(error, match="boom"):
        with tracking.stage_run(tmp_path, stage="train", task="rte", params={"a": 1}, inputs={}) as run:
            raise error("boom")
    assert mlflow.active_run() is None
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == status


def test_stage_runs_share_one_experiment(store, tmp_path):
    ids = []
    for stage in ("calibrate", "score"):
        with tracking.stage_run(tmp_path, stage=stage, task="rte", params={}, inputs={}) as run:
            ids.append(run.run_id)
    runs = mlflow.search_runs(experiment_names=["taso"], output_format="list")
    assert {r.info.run_id for r in runs} == set(ids)
    assert {r.info.run_name for r in runs} == {"calibrate@rte", "score@rte"}
