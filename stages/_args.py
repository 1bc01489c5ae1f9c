"""The shared command line of every stage module: ``python -m stages.<name> --task NAME``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.params import Params

# The shells DVC may run a stage command through (``$SHELL -c <cmd>``, else ``/bin/sh -c``).
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "fish", "ksh"})
WATCH_SECONDS = 0.25  # how soon a stage notices that dvc is gone (a cheap read of /proc)


def _terminate(signum: int, _frame) -> None:
    # Python's default for SIGTERM ends the process on the spot: no `finally`, so a temporary
    # output folder stays behind and the MLflow run stays RUNNING. Raising the exception that
    # SIGINT raises lets every block unwind (atomic writes drop their temporary, the run ends
    # KILLED). The training loop installs its own handler, which finishes the step first.
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name} before the stage finished")


def _stop_when_dvc_goes() -> None:
    """Send this process SIGTERM when the ``dvc`` process that started it exits.

    DVC runs a stage as ``$SHELL -c <cmd>`` and passes no SIGTERM on: ``kill <dvc pid>``
    (or ``timeout dvc repro``, or a scheduler stopping the main process) kills dvc alone and
    the stage ran on unseen, writing outputs and registering a version that no dvc.lock
    records, and racing the next ``dvc repro`` for the same checkpoint. A stage's parent is
    dvc, or a shell whose parent is dvc; when that chain changes (an orphan is re-parented at
    once, even before its dead parent is reaped), the stage stops as SIGTERM stops it.
    """
    import psutil  # a dependency of dvc, so present wherever a stage runs under dvc

    try:
        me = psutil.Process()
        parent = me.parent()
        if parent is None:
            return
        shell = parent if parent.name() in SHELLS else None
        chain = [(me, parent.pid)] + ([(shell, shell.ppid())] if shell is not None else [])
    except psutil.Error:  # a process table we cannot read: run unwatched, as before
        return

    def intact() -> bool:
        try:
            return all(proc.ppid() == ppid for proc, ppid in chain)
        except psutil.NoSuchProcess:  # the shell itself is gone
            return False

    def watch() -> None:
        while intact():
            time.sleep(WATCH_SECONDS)
        logging.getLogger(__name__).warning("dvc exited while this stage ran; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-dvc", daemon=True).start()


def _nproc(root: Path, splits: Callable[[Params], bool]) -> int:
    """``distributed.nproc`` from params.yaml where ``splits`` says the stage's work splits over
    ranks; 1 otherwise, or when params.yaml does not validate (the stage then says why)."""
    from pipeline.params import ParamsError, load_params

    try:
        params = load_params(root / "params.yaml", quick=True)
    except ParamsError:
        return 1
    return params.distributed.nproc if splits(params) else 1


def _torchrun(nproc: int) -> int:
    """Run this same stage command under torchrun with ``nproc`` local processes; its exit status.

    torchrun stops every rank when one fails and prints that rank's error; only rank 0 writes outs,
    so a failed stage leaves none half-written (DVC removed the old ones before it started).
    SIGINT and SIGTERM are passed on to torchrun, which passes them to every rank: each finishes
    its step, rank 0 checkpoints, and all stop. torchrun reports any rank's failure, and its own
    end by a signal, as status 1 (a rank's own 2 or 130 is in its printed error); a stage that
    passed a signal on exits 130 like a one-process stage stopped by it.
    """
    import subprocess

    module = sys.modules["__main__"].__spec__.name  # stages.<name>, as dvc.yaml runs it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    passed_on: list[int] = []
    procs: list[subprocess.Popen] = []

    def pass_on(signum: int, _frame) -> None:
        passed_on.append(signum)
        for proc in procs:  # none yet: torchrun is told at once after it starts
            proc.send_signal(signum)

    # Before torchrun starts: a signal in between must not unwind this process and orphan it.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, pass_on)
    procs.append(proc := subprocess.Popen([*cmd, "-m", module, *sys.argv[1:]]))
    if passed_on:
        proc.send_signal(passed_on[-1])
    code = proc.wait()
    if passed_on and code != 0:  # stopped by the signal; a run that finished anyway keeps its 0
        return 130
    return 128 - code if code < 0 else code


def stage_main(
    run: Callable[..., object], *, per: str | None = "task", distributed: bool | Callable[[Params], bool] = False
) -> None:
    """Parse ``--<per>`` and ``--root``, run the stage, and turn known errors into one clear line.

    Args:
        per: what one run of the stage is for (``task``, ``name`` of a composition), or None
            for a stage that runs once over the whole project: ``run(root)``.
        distributed: the stage can run data-parallel (True, or a function of the params that
            says whether it can with these); with ``distributed.nproc`` above 1 in params.yaml
            it then starts itself again under torchrun, which sets ``WORLD_SIZE``.

    Exit status: 0 done, 2 bad input (one ``error:`` line, no traceback), 130 interrupted by
    SIGINT or SIGTERM (outputs untouched; training leaves a checkpoint the next run resumes).
    """
    parser = argparse.ArgumentParser(description=run.__module__)
    if per:
        parser.add_argument(f"--{per}", dest="what", required=True)
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    if os.environ.get("DVC_STAGE"):  # set by dvc for every stage command it runs
        _stop_when_dvc_goes()
    if distributed and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        splits = distributed if callable(distributed) else lambda _params: True
        if (nproc := _nproc(args.root, splits)) > 1:
            sys.exit(_torchrun(nproc))
    try:
        if distributed:
            from taso import distributed as dist

            dist.init()
            if dist.active():
                logging.getLogger(run.__module__).info("rank %d of %d", dist.rank(), dist.world())
        run(args.what, args.root) if per else run(args.root)
        if distributed:
            dist.close()
    except Exception as e:
        # Imported only now: the errors live beside torch code, and a quick stage (check-params)
        # should not pay for torch's import to succeed.
        from pipeline.errors import USER_ERRORS

        if not isinstance(e, USER_ERRORS):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # SIGINT, SIGTERM (above), or TrainingInterrupted
        print(f"interrupted: {e or 'stopped by SIGINT before the stage finished'}", file=sys.stderr)
        sys.exit(130)
