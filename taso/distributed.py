"""Data parallelism under ``torchrun``: this process's rank, its share of the work, sums over ranks.

Nothing here starts processes: ``torchrun`` does (the stages relaunch themselves under it when
``distributed.nproc`` asks for it, ``stages/_args.py``) and sets ``RANK``, ``WORLD_SIZE`` and the
rendezvous variables; :func:`init` joins the group. Without
a group every function answers for one process, so library code calls them unconditionally.

The split is by examples within each global batch, never by batches across steps, so N ranks
take the same optimizer steps as one process with the whole batch: importance is a sum (each
rank scores its share and the sums are added), and a step's gradient is the mean over the
global batch (each rank's mean weighted by its share of the batch, then added).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=30)  # a rank that dies leaves the others waiting at most this long


def launched() -> bool:
    """Whether this process was started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join torchrun's process group, once; a no-op in a single process.

    The backend is gloo: taso trains on the CPU, and gloo reduces CPU tensors (nccl reduces CUDA
    tensors only; it becomes the choice when a rank's model lives on a GPU, which taso does not
    place yet: docs/scale.md).
    """
    if launched() and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes outs, logs to MLflow and registers."""
    return rank() == 0


def share(items: Sequence) -> list:
    """This rank's share of ``items``: every ``world()``-th from ``rank()`` (all of them in one process)."""
    return list(items[rank() :: world()])


def sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Add each tensor over all ranks, in place (one flat all-reduce)."""
    if not active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def any_(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: a decision all ranks must take together."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if active():
        dist.barrier()


def close() -> None:
    """Leave the process group after a rank's work is done (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
