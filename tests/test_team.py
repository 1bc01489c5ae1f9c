"""A team setup on this machine: a loopback `mlflow server` as the shared store and a folder DVC
remote, a first clone that publishes, a teammate's clone that pulls and reuses through them alone.

One module-scoped server and first project (a tiny config: one task, a few steps) feed the tests
here, in order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_pipeline_e2e import ROOT, always, copy_project, project_env, ran, sh

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (sqlite backend, artifacts served by the server), stopped at the end."""
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "store")],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "w"),
        env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _env(url: str, home: Path) -> dict:
    # HOME: no user-level DVC or git config leaks in.
    return project_env(MLFLOW_TRACKING_URI=url, HOME=str(home))


@pytest.fixture(scope="module")
def first(server, tmp_path_factory):
    """The first clone: one task, `dvc repro` against the server, pushed to a folder remote."""
    base = tmp_path_factory.mktemp("team")
    repo = copy_project(base / "first")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tasks"] = {"sentiment": {**raw["tasks"]["sentiment"], "max_train": 48, "max_eval": 32}}
    raw["compositions"] = {}
    raw["calibrate"]["n"] = 16
    raw["train"] |= {"max_steps": 3, "checkpoint_every": 2}
    raw["distributed"] = {"nproc": 2}  # score and train run under torchrun: two ranks, rank 0 writes
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = _env(server, base)
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(base / "dvc-site")], repo, env)
    sh(["dvc", "remote", "add", "-d", "team", str(base / "remote")], repo, env)  # a path: S3/GCS/SSH alike
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "init"], repo, env)
    done = sh(["dvc", "repro"], repo, env)
    out = done.stdout + done.stderr  # the ranks log to stderr
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "what ran"], repo, env)
    sh(["dvc", "push"], repo, env)
    return repo, env, out, base


def test_score_and_train_ran_on_two_ranks_and_wrote_once(first):
    repo, _, out, _ = first
    for stage in ("score@sentiment", "train@sentiment"):
        assert stage in ran(out)
    for step in ("score", "train"):  # each stage ran as two processes, not one
        assert out.count(f"pipeline.steps.{step}: rank 0 of 2") == 1 and f"pipeline.steps.{step}: rank 1 of 2" in out
    meta = json.loads((repo / "artifacts/sentiment/adapter/meta.json").read_text())
    assert meta["stage"] == "train"
    assert not list((repo / "artifacts").rglob("*.tmp*"))


def test_the_pipeline_logs_and_registers_on_the_server_and_keeps_no_local_store(server, first):
    from mlflow import MlflowClient

    repo, _, out, _ = first
    assert {"train@sentiment", "promote@sentiment"} <= ran(out)
    assert not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists()
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    version = client.get_model_version_by_alias("taso-sentiment", "candidate")
    assert (
        version.tags["mask_digest"] == json.loads((repo / "artifacts/sentiment/mask/mask.json").read_text())["digest"]
    )
    runs = client.search_runs([client.get_experiment_by_name("taso").experiment_id])
    assert {r.data.tags["taso.stage"] for r in runs} >= {"score", "derive-mask", "train", "evaluate", "promote"}


def test_the_registry_commands_work_against_the_server(first):
    repo, env, _, _ = first
    taso = str(Path(sys.executable).parent / "taso")
    # A few steps on 48 examples learn nothing, so promote (if_better) left champion unset: by hand.
    version = json.loads((repo / "artifacts/sentiment/train.json").read_text())["registry_version"]
    sh([taso, "registry", "promote", "taso-sentiment", str(version), "--alias", "champion"], repo, env)
    shown = sh([taso, "registry", "list"], repo, env).stdout
    assert "taso-sentiment" in shown and "champion" in shown


def test_a_fresh_clone_pulls_every_artifact_and_has_nothing_to_reproduce(first):
    repo, env, _, base = first
    clone = base / "pulled"
    sh(["git", "clone", "-q", str(repo), str(clone)], base, env)
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(base / "dvc-site-2")], clone, env)
    sh(["dvc", "pull"], clone, env)
    for out in ("importance/sentiment/importance.safetensors", "sentiment/mask/mask.safetensors"):
        assert (clone / "artifacts" / out).read_bytes() == (repo / "artifacts" / out).read_bytes()
    assert ran(sh(["dvc", "repro"], clone, env).stdout) == always(clone)  # the checks of params and data; nothing else
    # The pulled mask serves another task as a mask source, as the first clone's does.
    from pipeline.sources import load_mask

    pulled = load_mask("file:artifacts/sentiment/mask", root=clone)
    assert pulled.digest == json.loads((repo / "artifacts/sentiment/mask/mask.json").read_text())["digest"]

    # Deleted artifacts come back from the cache or the remote, not from training again.
    for name in ("adapter", "mask"):
        subprocess.run(["rm", "-rf", str(clone / "artifacts" / "sentiment" / name)], check=True)
    again = sh(["dvc", "repro", "--pull"], clone, env).stdout
    assert ran(again) <= always(clone), again
    assert (clone / "artifacts/sentiment/adapter/adapter_model.safetensors").read_bytes() == (
        repo / "artifacts/sentiment/adapter/adapter_model.safetensors"
    ).read_bytes()


def test_a_teammate_trains_a_new_task_on_the_published_mask_through_the_server_alone(server, first):
    from mlflow import MlflowClient

    from taso.masks import Mask

    repo, env, _, base = first
    mate = base / "teammate"
    sh(["git", "clone", "-q", str(repo), str(mate)], base, env)
    sh(["dvc", "config", "--local", "core.site_cache_dir", str(base / "dvc-site-3")], mate, env)
    params = yaml.safe_load((mate / "params.yaml").read_text())
    # Only the new task: the teammate has none of the first clone's artifacts, only the server.
    source = "registry:taso-sentiment@champion"
    params["tasks"] = {"reuse": {**params["tasks"]["sentiment"], "mask_source": source}}
    (mate / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(["dvc", "repro"], mate, env).stdout
    assert {"derive-mask@reuse", "train@reuse", "promote@reuse"} <= ran(out)
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    published = client.get_model_version_by_alias("taso-sentiment", "champion").tags["mask_digest"]
    assert Mask.load(mate / "artifacts" / "reuse" / "mask").digest == published
    assert client.get_model_version_by_alias("taso-reuse", "candidate").tags["mask_source_digest"] == published


def test_a_stage_whose_rank_fails_stops_with_that_error_and_keeps_the_old_outs(first, tmp_path):
    repo, env, _, _ = first
    adapter = repo / "artifacts/sentiment/adapter/adapter_model.safetensors"
    before = adapter.read_bytes()
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import taso.train\n"
        "    def fail(*args, **kwargs):\n"
        "        raise RuntimeError('rank 1 failed on purpose')\n"
        "    taso.train.train = fail\n"
    )
    env = env | {"PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "stages.train", "--task", "sentiment"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode != 0 and "rank 1 failed on purpose" in done.stderr
    assert adapter.read_bytes() == before
    assert not list((repo / "artifacts").rglob(".*.tmp-*"))  # no temporary of an atomic write left
