"""Non-finite losses, signals, kills and concurrent experiments lose nothing: the process-level promises.

In-process and single-subprocess cases run on a tiny BERT. The `slow` cases run the real
`dvc repro` / `dvc queue` on a git copy of this project whose params point at that tiny
model: one task, a few dozen training steps, so what is measured is DVC's and the stages'
behaviour, not training.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_pipeline_e2e import copy_project
from test_stages import tiny_bert_folder

from taso.importance import default_loss

ROOT = Path(__file__).resolve().parents[1]
TASK = "entailment"
STEPS = 60  # training steps of the dvc cases: long enough to signal mid-run, short enough to be cheap


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_bert_folder(tmp_path_factory.mktemp("models") / "tiny-bert")


def tiny_params(model: Path, **train) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] |= {"base": str(model), "max_length": 32}
    raw["tasks"] = {TASK: {**raw["tasks"][TASK], "max_train": 32, "max_eval": 16}}
    raw["compositions"] = {}
    raw["calibrate"]["n"] = 8
    raw["train"] |= {"batch_size": 4, "epochs": 100, "max_steps": 12, "checkpoint_every": 4, **train}
    return raw


def write_params(root: Path, raw: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def leftovers(*folders: Path) -> list[str]:
    """Temporary siblings that taso.io.atomic_path would leave behind if it did not clean up."""
    return sorted(str(p) for d in folders if d.is_dir() for p in d.iterdir() if ".tmp-" in p.name)


def checkpoint_files(root: Path) -> list[Path]:
    return sorted((root / "checkpoints" / TASK).glob("*.pt"))


def subprocess_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    return env | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


# --- a non-finite loss, in the train stage ----------------------------------------------------


@pytest.fixture
def project(tmp_path, tiny_model, monkeypatch) -> Path:
    """A project on the tiny model with calibrate, score and derive-mask already run."""
    write_params(tmp_path, tiny_params(tiny_model))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from pipeline.steps import calibrate, derive_mask, score
    from pipeline.steps import data as data_stage

    for stage in (data_stage, calibrate, score, derive_mask):
        stage.run(TASK, tmp_path)
    return tmp_path


def nan_from_call(call: int):
    """The training loss, except that its ``call``-th evaluation (0-based), i.e. step ``call``, is NaN."""
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = default_loss(model, batch)
        return loss * float("nan") if len(calls) == call + 1 else loss

    return loss_fn


def train_runs(root: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("taso")
    runs = client.search_runs([exp.experiment_id], "tags.`taso.stage` = 'train'", order_by=["attributes.start_time"])
    return runs


def test_nan_loss_stops_train_stage_naming_the_step_and_keeps_the_last_checkpoint(project, monkeypatch):
    import pipeline.steps.train as train_stage
    import taso.train
    from taso.train import NonFiniteLossError

    # checkpoint_every is 4: the loss of step 7 is NaN, so the last good checkpoint is step 4's.
    monkeypatch.setattr(train_stage, "train", functools.partial(taso.train.train, loss_fn=nan_from_call(7)))
    with pytest.raises(
        NonFiniteLossError, match=r"^loss is nan at step 7; the last good checkpoint \(step 4\) is "
    ) as e:
        train_stage.run(TASK, project)
    [ckpt] = checkpoint_files(project)
    assert str(ckpt) in str(e.value)
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in state["trainable"].values())
    art = project / "artifacts" / TASK
    assert not (art / "adapter").exists() and not (art / "train.json").exists()
    assert leftovers(art, ckpt.parent) == []
    assert [r.info.status for r in train_runs(project)] == ["FAILED"]
    # Nothing registered a version for the failed run.
    from mlflow import MlflowClient

    assert not MlflowClient(registry_uri=f"sqlite:///{project / 'mlflow.db'}").search_registered_models()

    # The checkpoint is a good one: the same run without the bad loss resumes from it.
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    train_stage.run(TASK, project)
    trained = json.loads((art / "train.json").read_text())
    assert trained["resumed_from_step"] == 4 and trained["steps"] == 12 and trained["registry_version"] == 1
    assert checkpoint_files(project) == []


def test_nonfinite_gradient_of_a_finite_loss_stops_before_it_reaches_weights_or_checkpoint(
    tmp_path, make_model, make_batches, make_features
):
    from taso.importance import score_importance
    from taso.injection import inject
    from taso.masks import derive_rows_cols
    from taso.train import NonFiniteLossError, TrainConfig, train, trainable_state

    model = make_model("bert")
    inject(model, derive_rows_cols(score_importance(model, make_batches("bert")), 0.25), r=1, alpha=2.0)
    calls = []

    def loss_fn(m, batch):
        # At step 5 the value stays finite but d/dx sqrt(x) at 0 is inf, and 0 * inf is NaN.
        calls.append(1)
        loss = default_loss(m, batch)
        if len(calls) == 6:
            w = m.classifier.weight
            loss = loss + 0.0 * torch.sqrt(w - w.detach()).sum()
        return loss

    ckpt = tmp_path / "ckpt.pt"
    cfg = TrainConfig(lr=1e-2, max_steps=12, batch_size=4, checkpoint_every=2, max_grad_norm=0.0)
    with pytest.raises(
        NonFiniteLossError, match=r"^gradient norm is nan at step 5; the last good checkpoint \(step 4\)"
    ):
        train(model, make_features("bert", 32), cfg, checkpoint=ckpt, loss_fn=loss_fn, progress=False)
    assert all(torch.isfinite(t).all() for t in trainable_state(model).values())
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in state["trainable"].values())


def test_train_command_on_a_diverging_run_prints_one_error_line_and_exits_2(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["lr"] = 1e30  # absurd: the first update overflows the logits
    write_params(project, raw)
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    cmd = [sys.executable, "-m", "stages.train", "--task", TASK, "--root", str(project)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "is nan at step" in errors[0] or "is inf at step" in errors[0], errors[0]
    assert "lower train.lr" in errors[0]
    assert not (project / "artifacts" / TASK / "adapter").exists()


# --- SIGTERM outside the training loop ----------------------------------------------------------

SIGTERM_MIDWAY = """
import os, signal, sys, time
from pathlib import Path
from stages._args import stage_main
from taso.io import atomic_path

def run(task, root):
    with atomic_path(Path(root) / "out") as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half of an output")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        (tmp / "other-half.txt").write_text("never written")

sys.argv = ["stage", "--task", "t", "--root", sys.argv[1]]
stage_main(run)
"""


def test_sigterm_while_writing_an_output_unwinds_and_exits_130(tmp_path):
    # Python's default SIGTERM ends the process on the spot, leaving the temporary behind.
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_MIDWAY, str(tmp_path)],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "interrupted: stopped by SIGTERM before the stage finished"
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


WAITING_STAGE = """
import sys, time
from stages._args import stage_main

def run(task, root):
    print("ready", flush=True)
    while True:
        time.sleep(0.05)

sys.argv = ["stage", "--task", "t"]
stage_main(run)
"""
# Stands in for dvc: runs the stage command as `<shell> -c <cmd>`, as dvc.stage.run does.
FAKE_DVC = "import subprocess, sys; subprocess.run([sys.argv[1], '-c', sys.argv[2]])"


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])  # dash keeps a shell between; bash execs
def test_a_stage_stops_when_the_dvc_that_runs_it_is_killed(tmp_path, shell):
    import psutil

    if not Path(shell).exists():
        pytest.skip(f"no {shell}")
    script, log = tmp_path / "stage.py", tmp_path / "stderr.txt"
    script.write_text(WAITING_STAGE)
    with open(log, "w") as err:
        dvc = subprocess.Popen(
            [sys.executable, "-c", FAKE_DVC, shell, f"{sys.executable} {script}"],
            cwd=ROOT,
            env=subprocess_env(DVC_STAGE="train@t"),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert dvc.stdout.readline().strip() == "ready"
    [stage] = [p for p in psutil.Process(dvc.pid).children(recursive=True) if str(script) in p.cmdline()]
    dvc.terminate()  # SIGTERM: Python's default ends dvc at once, its stage command is not told
    dvc.wait(timeout=30)
    try:
        _, alive = psutil.wait_procs([stage], timeout=20)
        assert not alive, "the stage ran on after dvc was killed"
    finally:
        if stage.is_running():
            stage.kill()
    text = log.read_text()
    assert "dvc exited while this stage ran; stopping" in text, text
    assert text.strip().splitlines()[-1] == "interrupted: stopped by SIGTERM before the stage finished", text


def test_queued_experiment_stages_use_the_store_of_the_repo_they_came_from(tmp_path, monkeypatch):
    from pipeline import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"  # where `dvc queue` runs an experiment
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri(copy) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.delenv("DVC_ROOT")  # run by hand, outside dvc
    assert tracking.tracking_uri(copy) == f"sqlite:///{copy.resolve()}/mlflow.db"


# --- the real dvc: interruption, kills, queued experiments ---------------------------------------


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def dvc_exit(out: str) -> int:
    """The status dvc reports for the stage command it ran ("failed to run: ..., exited with N")."""
    found = re.findall(r"exited with (-?\d+)", out)
    assert found, out[-3000:]
    return int(found[-1])


# What dvc reports depends on the shell it runs the stage through ($SHELL, else /bin/sh): bash
# execs a lone command, so dvc sees the stage itself (exit 130, or -N when a signal killed it);
# dash stays in between and reports a killed child as 128+N, and when SIGINT reached the whole
# group it re-raises SIGINT on itself after the stage exits (-2). The stage behaves the same
# under both; these are the statuses that each shell may turn its ending into.
STOPPED = {"group": {130, -signal.SIGINT}, "stage": {130}}
KILLED = {-signal.SIGKILL, 128 + signal.SIGKILL}


def dvc_env(shell: str = "/bin/sh") -> dict:
    """The environment of a real ``dvc`` run; ``shell`` is what dvc runs stage commands through
    (fixed, so that a test does not depend on the $SHELL of whoever runs it)."""
    env = subprocess_env(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env["SHELL"] = shell
    env.pop("PYTHONPATH")  # stages import the copy's own code
    return env


def clone(base: Path, dest: Path) -> Path:
    """A copy of the base repo (git, DVC cache, outputs) with its own DVC site cache."""
    shutil.copytree(base, dest, symlinks=True)
    (dest / ".dvc" / "config.local").write_text(f"[core]\n    site_cache_dir = {dest}.dvc-site\n")
    return dest


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory, tiny_model) -> Path:
    """A git repo of this project on the tiny model, with calibrate → derive-mask done and committed.

    Those three stages are not what is tested here, so they run in this process (no start-up
    cost) and `dvc commit` records them in dvc.lock as `dvc repro` would. They log to a
    scratch store: the repo's own MLflow store starts empty.
    """
    repo = copy_project(tmp_path_factory.mktemp("base") / "repo")
    write_params(repo, tiny_params(tiny_model, max_steps=STEPS, checkpoint_every=5))
    env = dvc_env()
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    (repo / ".dvc" / "config.local").write_text(f"[core]\n    site_cache_dir = {repo}.dvc-site\n")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "project"], repo, env)
    from pipeline.steps import calibrate, derive_mask, score
    from pipeline.steps import data as data_stage

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo.parent / 'upstream.db'}")
        for stage in (data_stage, calibrate, score, derive_mask):
            stage.run(TASK, repo)
    sh(["dvc", "commit", "--force", "--with-deps", f"derive-mask@{TASK}"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "upstream stages"], repo, env)
    return repo


def adapter_tensors(repo: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(repo / "artifacts" / TASK / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(base_repo, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The adapter of an uninterrupted train stage on a copy of the base repo.

    It runs in this process, which saves a stage start-up; the dvc cases, run in their own
    processes, must still match it bit for bit.
    """
    repo = clone(base_repo, tmp_path_factory.mktemp("reference") / "repo")
    from pipeline.steps import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
        train.run(TASK, repo)
    trained = json.loads((repo / "artifacts" / TASK / "train.json").read_text())
    assert trained["resumed_from_step"] == 0 and trained["steps"] == STEPS
    return adapter_tensors(repo)


HOOK = """
# On PYTHONPATH for the test's dvc commands, so every Python process loads it; it acts only
# in the train stage (DVC sets DVC_STAGE for stage commands) and only through os.replace,
# which taso.io.atomic_path uses to move each finished checkpoint or output into place.
import os, signal, time

if os.environ.get("DVC_STAGE", "").startswith("train@"):
    _replace = os.replace
    _pause = float(os.environ.get("HOOK_PAUSE_AFTER_CHECKPOINT", "0"))
    _kill = os.environ.get("HOOK_SIGKILL_BEFORE", "")

    def replace(src, dst, *args, **kwargs):
        if _kill and os.fspath(dst).endswith(_kill):
            os.kill(os.getpid(), signal.SIGKILL)
        _replace(src, dst, *args, **kwargs)
        if os.fspath(dst).endswith(".pt"):
            time.sleep(_pause)  # a slow step: the test's signal lands mid-training on any machine

    os.replace = replace
"""


def hooked(env: dict, tmp_path: Path, **settings: str) -> dict:
    """``env`` with :data:`HOOK` loaded by the train stage, configured by ``settings``."""
    folder = tmp_path / "hook"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    return env | {"PYTHONPATH": str(folder), **{f"HOOK_{k.upper()}": v for k, v in settings.items()}}


def start_dvc(repo: Path, env: dict, *args: str) -> subprocess.Popen:
    # A session of its own, like a terminal's foreground job: the test can signal the group.
    return subprocess.Popen(
        ["dvc", "repro", *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def checkpoint_inode(repo: Path) -> int | None:
    """Identifies the checkpoint file's current version: each atomic save makes a new file."""
    files = checkpoint_files(repo)
    return files[0].stat().st_ino if files else None


def wait_for_checkpoint(repo: Path, dvc: subprocess.Popen, previous: int | None = None, timeout: float = 300):
    """The train stage's process, once it has saved a checkpoint (other than ``previous``)."""
    import psutil

    deadline = time.monotonic() + timeout
    while checkpoint_inode(repo) in (None, previous):
        if dvc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no new checkpoint; dvc exited {dvc.returncode}:\n{dvc.communicate()[0][-4000:]}")
        time.sleep(0.05)

    def is_train_stage(proc: psutil.Process) -> bool:
        try:
            return "stages.train" in proc.cmdline()
        except psutil.Error:  # a short-lived helper (git) that is already gone
            return False

    [stage] = [p for p in psutil.Process(dvc.pid).children(recursive=True) if is_train_stage(p)]
    return stage


def stage_changed(repo: Path, env: dict, stage: str = f"train@{TASK}") -> bool:
    status = json.loads(sh(["dvc", "status", "--json", stage], repo, env).stdout)
    return stage in status


def assert_nothing_recorded(repo: Path) -> None:
    """No train output in place, no temporary one, and dvc.lock does not know the stage ran."""
    art = repo / "artifacts" / TASK
    assert not (art / "adapter").exists() and not (art / "train.json").exists()
    assert f"train@{TASK}" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def assert_same_adapter(repo: Path, reference: dict[str, torch.Tensor]) -> None:
    resumed = adapter_tensors(repo)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_interrupted_training_resumes_under_dvc_to_the_same_weights(base_repo, reference, tmp_path, shell):
    """Three interruptions of one training run, each resumed by the next `dvc repro`.

    Ctrl-C in the terminal (SIGINT to dvc's process group: dvc ignores it while a stage runs,
    the stage stops), SIGTERM to the stage process, and SIGTERM to dvc alone (`kill`,
    `timeout`): DVC passes no SIGTERM on, so the stage notices that dvc is gone and stops.
    """
    import psutil

    repo, env = clone(base_repo, tmp_path / "repo"), dvc_env(shell)
    slow = hooked(env, tmp_path, pause_after_checkpoint="0.5")
    stops = [0]
    for sig, target in ((signal.SIGINT, "group"), (signal.SIGTERM, "stage"), (signal.SIGTERM, "dvc")):
        dvc = start_dvc(repo, slow, f"train@{TASK}")
        stage = wait_for_checkpoint(repo, dvc, previous=checkpoint_inode(repo))
        if target == "group":
            os.killpg(dvc.pid, sig)
        else:
            (stage if target == "stage" else dvc).send_signal(sig)
        out = dvc.communicate(timeout=120)[0]
        _, alive = psutil.wait_procs([stage], timeout=60)
        assert not alive, f"the train stage ran on after {sig.name} to {target}"
        assert dvc.returncode != 0, out[-3000:]
        assert f"interrupted: stopped by {sig.name}" in out, out[-3000:]  # the stage's own ending
        if target != "dvc":  # dvc saw the stage stop: "failed to run: ..., exited with N"
            assert dvc_exit(out) in STOPPED[target], out[-3000:]
        [ckpt] = checkpoint_files(repo)
        stops.append(torch.load(ckpt, weights_only=True)["step"])
        assert stops[-2] < stops[-1] < STEPS, stops
        assert_nothing_recorded(repo)
        assert leftovers(repo / "artifacts" / TASK, ckpt.parent) == []
    assert stage_changed(repo, env)

    out = sh(["dvc", "repro", f"train@{TASK}"], repo, env).stdout
    assert f"Running stage 'train@{TASK}'" in out
    trained = json.loads((repo / "artifacts" / TASK / "train.json").read_text())
    assert trained["resumed_from_step"] == stops[-1] and trained["steps"] == STEPS
    assert_same_adapter(repo, reference)
    assert checkpoint_files(repo) == [] and f"train@{TASK}" in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert [r.info.status for r in train_runs(repo)] == ["KILLED"] * 3 + ["FINISHED"]
    assert trained["registry_version"] == 1  # the interrupted runs registered nothing


@pytest.mark.slow
def test_a_killed_stage_leaves_no_partial_out_and_the_next_repro_completes(base_repo, reference, tmp_path):
    repo, env = clone(base_repo, tmp_path / "repo"), dvc_env()
    art = repo / "artifacts" / TASK
    # 1. SIGKILL mid-training: no handler runs; the periodic checkpoint is what is left.
    dvc = start_dvc(repo, hooked(env, tmp_path, pause_after_checkpoint="0.5"))
    wait_for_checkpoint(repo, dvc).kill()
    out = dvc.communicate(timeout=120)[0]
    assert dvc.returncode != 0 and dvc_exit(out) in KILLED, out[-3000:]
    assert_nothing_recorded(repo)

    # 2. SIGKILL with the adapter completely written to its temporary folder, just before the
    # rename that would put it in place.
    proc = sh(["dvc", "repro"], repo, hooked(env, tmp_path, sigkill_before=f"artifacts/{TASK}/adapter"), check=False)
    assert proc.returncode != 0 and dvc_exit(proc.stdout + proc.stderr) in KILLED, proc.stderr[-3000:]
    assert_nothing_recorded(repo)
    [partial] = [p for p in art.iterdir() if p.name.startswith(".adapter.")]
    assert {"adapter_model.safetensors", "meta.json"} <= {f.name for f in partial.rglob("*")}  # whole, never an out
    assert stage_changed(repo, env)

    # 3. The next repro resumes train from its last checkpoint and runs evaluate.
    out = sh(["dvc", "repro"], repo, env).stdout
    assert f"Running stage 'evaluate@{TASK}'" in out
    trained = json.loads((art / "train.json").read_text())
    assert trained["resumed_from_step"] == STEPS and trained["steps"] == STEPS
    assert_same_adapter(repo, reference)
    assert leftovers(art) == []  # the killed writer's temporary was swept by the next write
    # Nothing left to run but the checks of params and data, which run on every repro.
    assert (art / "metrics.json").is_file()
    assert set(json.loads(sh(["dvc", "status", "--json"], repo, env).stdout)) == {"check-params", f"data@{TASK}"}


def experiment_refs(repo: Path, env: dict) -> dict[str, str]:
    """Finished experiments: name → git ref."""
    out = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo, env).stdout.split()
    return {ref.rsplit("/", 1)[1]: ref for ref in out if ref.count("/") == 4}


def cached_file(repo: Path, env: dict, rev: str, stage: str, name: str) -> str:
    """The text of file ``name`` in ``stage``'s folder out at ``rev``, read from the DVC cache."""
    lock = yaml.safe_load(sh(["git", "show", f"{rev}:dvc.lock"], repo, env).stdout)
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    folders = [o["md5"] for o in lock["stages"][stage]["outs"] if o["md5"].endswith(".dir")]  # not its plots
    listings = [json.loads((cache / md5[:2] / md5[2:]).read_text()) for md5 in folders]
    [entry] = [e for listing in listings for e in listing if e["relpath"] == name]
    return (cache / entry["md5"][:2] / entry["md5"][2:]).read_text()


@pytest.mark.slow
def test_queued_experiments_register_distinct_versions_in_the_project_store(base_repo, tmp_path):
    from mlflow import MlflowClient

    repo, env = clone(base_repo, tmp_path / "repo"), dvc_env()
    for name, p in (("half", "0.5"), ("eighth", "0.125")):
        sh(["dvc", "exp", "run", "--queue", "-S", f"mask.p={p}", "-n", name], repo, env)
    sh(["dvc", "queue", "start", "-j", "2"], repo, env)
    # A finished experiment is a git ref; watching refs is cheap, `dvc queue status` is not
    # (it would take CPU from the two experiments), so it is only asked now and then.
    deadline, asked = time.monotonic() + 500, time.monotonic()
    while len(refs := experiment_refs(repo, env)) < 2:
        if time.monotonic() - asked > 20:
            status, asked = sh(["dvc", "queue", "status"], repo, env).stdout, time.monotonic()
            assert "Failed" not in status, status + sh(["dvc", "queue", "logs", "half"], repo, env).stdout[-3000:]
        assert time.monotonic() < deadline, sh(["dvc", "queue", "status"], repo, env).stdout
        time.sleep(2)
    assert sorted(refs) == ["eighth", "half"]
    # Each experiment's mask, as DVC recorded it: its dvc.lock names the mask folder in the cache.
    digests = {
        name: json.loads(cached_file(repo, env, ref, f"derive-mask@{TASK}", "mask.json"))["digest"]
        for name, ref in refs.items()
    }
    assert digests["half"] != digests["eighth"]

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    versions = {str(v.version): v for v in client.search_model_versions(f"name = 'taso-{TASK}'")}
    assert sorted(versions) == ["1", "2"]
    assert sorted(v.tags["mask_digest"] for v in versions.values()) == sorted(digests.values())
    experiment = client.get_experiment_by_name("taso").experiment_id
    runs = client.search_runs([experiment], "tags.`taso.stage` = 'train'")
    assert sorted(r.data.tags["taso.dvc_exp"] for r in runs) == ["eighth", "half"]
    for run in runs:  # each experiment's train run registered the version made from its own mask
        version = versions[run.data.tags["taso.registered_version"]]
        assert version.run_id == run.info.run_id
        assert version.tags["mask_digest"] == run.data.tags["taso.input.mask"] == digests[run.data.tags["taso.dvc_exp"]]
        # The model's files live in the project's mlruns/, not in the deleted experiment copy.
        source = Path(client.get_model_version_download_uri(f"taso-{TASK}", version.version).removeprefix("file://"))
        assert source.is_relative_to(repo / "mlruns") and source.is_dir(), source
    aliases = {k: str(v) for k, v in client.get_registered_model(f"taso-{TASK}").aliases.items()}
    assert aliases["candidate"] in versions
    for name, ref in refs.items():  # metrics files are committed with each experiment: `dvc exp show` sees them
        trained = json.loads(sh(["git", "show", f"{ref}:artifacts/{TASK}/train.json"], repo, env).stdout)
        assert versions[str(trained["registry_version"])].tags["mask_digest"] == digests[name]
    accuracy = {v: float(mv.tags["metric.accuracy"]) for v, mv in versions.items()}  # set by each evaluate
    # The champion is the best version that learned something; one that did not is never promoted.
    learned = {v: a for v, a in accuracy.items() if "degenerate" not in versions[v].tags}
    if learned:
        assert accuracy[aliases["champion"]] == max(learned.values())
    else:
        assert "champion" not in aliases
