"""Running benchmark runs one at a time in this process, or several at once in fresh processes."""

from __future__ import annotations

import ctypes
import signal
import sys
from concurrent.futures import Future

import torch


def worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    if sys.platform == "linux":  # die with the parent, so a killed sweep leaves no orphan training on
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class InProcess:
    """``--jobs 1``: the pool's interface, running each run at once in this process."""

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # as a pool would: the caller sees it through the future
            future.set_exception(exc)
        return future
