"""Data parallelism under torchrun (gloo on CPU): two ranks score and train as one process does,
and a rank that fails stops them all with its error. The pipeline's stages under torchrun are
tested end to end in tests/test_team.py."""

from __future__ import annotations

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


def test_a_rank_that_fails_stops_every_rank_with_its_error_and_nothing_is_written(tmp_path):
    out = tmp_path / "out.safetensors"
    done = _torchrun(out, "1")
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in done.stdout + done.stderr
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
