"""Data parallelism under torchrun (gloo on CPU): two ranks score and train as one process does,
and a rank that fails stops them all with its error. The pipeline's stages under torchrun are
tested end to end in tests/test_team.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def _torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    # A hang is a failure: the timeout turns it into one instead of a stuck suite.
    return subprocess.run(
        [*cmd, str(HERE / "dist_worker.py"), str(out), *extra], capture_output=True, text=True, timeout=300
    )


def test_two_ranks_score_and_train_as_one_process_with_the_whole_batch(tmp_path):
    import dist_worker
    from safetensors.torch import load_file

    done = _torchrun(tmp_path / "two.safetensors")
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = load_file(tmp_path / "two.safetensors"), dist_worker.compute()
    assert two.keys() == one.keys()
    for key in one:
        if key.startswith("imp."):  # a sum split over ranks: equal to rounding
            torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=0)
        elif key.startswith(("mask.", "losia.")) and not key.endswith(".delta"):  # the same rows and columns
            assert torch.equal(two[key], one[key]), key
        elif key.startswith("lm."):
            # Token-weighted shares. Adam turns rounding in a near-zero gradient into up to a step's
            # size (1e-4 here); weighting by examples instead is off by 3e-2, the size of B itself.
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-3)
        else:  # each rank's share of every batch, gradients added: the same three steps
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    assert any(k.startswith("trained.") and "lora" in k for k in one)


@pytest.mark.parametrize(
    ("arg", "error"),
    [
        ("1", "rank 1 failed on purpose"),
        # Its EMAs run over the batches in order; a per-rank share would silently give another score.
        ("sensitivity", "the sensitivity statistic is a running average over batches in order"),
    ],
    ids=["a-rank-fails", "sensitivity-refuses-to-split"],
)
def test_an_error_on_a_rank_stops_every_rank_with_that_error_and_nothing_is_written(tmp_path, arg, error):
    out = tmp_path / "out.safetensors"
    done = _torchrun(out, arg)
    assert done.returncode != 0
    assert error in done.stdout + done.stderr
    assert not out.exists()


@pytest.mark.parametrize("n", [1, 2, 5])
def test_a_share_takes_every_nth_item_from_the_rank(n, monkeypatch):
    from taso import distributed

    items = list(range(11))
    shares = []
    for r in range(n):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world", lambda: n)
        shares.append(distributed.share(items))
    assert sorted(x for s in shares for x in s) == items and max(map(len, shares)) - min(map(len, shares)) <= 1


def test_sigterm_to_a_distributed_stage_stops_every_rank_after_the_same_step_and_the_run_resumes(tmp_path):
    # The stage passes SIGTERM on to torchrun, torchrun to every rank; each finishes its step, the
    # ranks agree on the last one, rank 0 checkpoints it, the stage exits 130 as a one-process
    # stage does, and the next run resumes there and ends where an uninterrupted run ends.
    import os
    import signal
    import time

    import dist_signal_worker
    import yaml
    from safetensors.torch import load_file

    raw = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw | {"distributed": {"nproc": 2}}))
    (tmp_path / "slow").touch()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    stage = [sys.executable, "-m", "dist_signal_worker", "--root", str(tmp_path)]
    # Output to a file, not a pipe nobody reads while the test waits: a full pipe would block the stage.
    log = (tmp_path / "stage.log").open("w+")
    proc = subprocess.Popen(stage, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stage.log").read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)  # a rank that ignored it would hang here
    log.close()
    err = (tmp_path / "stage.log").read_text()
    stopped = re.findall(r"interrupted: stopped by SIGTERM after step (\d+)", err)
    assert len(stopped) == 2 and len(set(stopped)) == 1, err[-3000:]  # both ranks, the same step
    assert 0 < int(stopped[0]) < dist_signal_worker.STEPS
    assert proc.returncode == 130, err[-3000:]
    assert (tmp_path / "ckpt.pt").is_file() and not (tmp_path / "out.safetensors").exists()

    (tmp_path / "slow").unlink()
    done = subprocess.run(stage, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {stopped[0]}" in done.stderr
    resumed, uninterrupted = load_file(tmp_path / "out.safetensors"), dist_signal_worker.trained(None)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-4, atol=1e-5)
