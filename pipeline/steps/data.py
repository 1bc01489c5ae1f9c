"""data: read and check every split of a task, and fingerprint it → artifacts/<task>/data/{train,eval}.json.

DVC reruns a stage when a file it depends on changes, but a task's data has no one path that
dvc.yaml could list: it is a local folder, the demo generator, or a hub dataset. So this stage
runs on every ``dvc repro`` (``always_changed``, like check-params) and writes, per split, the
digest of the examples exactly as the other stages read them (after parsing, label mapping and
the seeded ``max_train`` / ``max_eval`` cut). When the data did not change the files come out
byte for byte the same and nothing downstream reruns; an edited train file reruns the stages
that read the train split, an edited eval file only evaluate. No timestamp and no code version
go in, for that reason: what produced the file is in its ``stage`` and ``source`` fields.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pipeline.params import load_params
from pipeline.paths import TaskPaths
from taso.data import SPLITS, DataError, TaskSpec, digest_rows, read_rows
from taso.io import read_json, write_json

log = logging.getLogger(__name__)


def _local(spec: TaskSpec) -> bool:
    return not spec.source.startswith(("demo:", "hub:"))


def rooted(spec: TaskSpec, root: Path) -> TaskSpec:
    """``spec`` with a relative local ``source`` taken from the project ``root``, as every artifact path is."""
    if not _local(spec) or Path(spec.source).is_absolute():
        return spec
    return dataclasses.replace(spec, source=str(Path(root) / spec.source))


def fingerprint(spec: TaskSpec, split: str, seed: int, root: Path = Path(".")) -> dict:
    """What ``split`` of the task holds, as the stages will read it: where from, how many examples, their digest.

    The ``file`` is recorded as params.yaml names it, so the bytes do not depend on where the project sits.
    """
    rows = read_rows(rooted(spec, root), split, seed=seed)
    local = _local(spec)
    return {
        "stage": "data",
        "task": spec.name,
        "split": split,
        "source": spec.source,
        "file": str(Path(spec.source) / spec.splits[split]) if local else None,  # demo and hub: no file of ours
        "examples": len(rows),
        "digest": digest_rows(rows),
    }


def run(task: str, root: Path = Path(".")) -> Path:
    """Write one fingerprint per split (the folder is returned); every split is read before either file is written."""
    params = load_params(root / "params.yaml", quick=True)  # the method registry (torch) is not needed here
    spec, paths = params.spec(task), TaskPaths(root, task)
    # The task's first stage reads every split (file, parse, columns, labels), so a bad eval file
    # stops the run here, in seconds, not at evaluate after scoring and training.
    prints = {split: fingerprint(spec, split, params.seed, root) for split in SPLITS}
    for split, fp in prints.items():
        write_json(paths.data_file(split), fp)
        where = fp["file"] or spec.source
        log.info("%s %s: %d examples from %s, digest %s", task, split, fp["examples"], where, fp["digest"][:12])
    return paths.data_file("train").parent


def read_split(root: Path, spec: TaskSpec, split: str, seed: int) -> tuple[list[dict], str]:
    """``split``'s examples and their digest, which must be the one the data stage recorded.

    A stage logs that digest as its input and DVC reruns it when the recorded one changes; data
    edited after the data stage ran (a stage started by hand) would train or score on examples
    no artifact names, so it stops here instead.
    """
    recorded = recorded_digest(root, spec.name, split)
    rows = read_rows(rooted(spec, root), split, seed=seed)
    digest = digest_rows(rows)
    if digest != recorded:
        raise DataError(
            f"task {spec.name}: the {split} split changed after the data stage fingerprinted it "
            f"({TaskPaths(root, spec.name).data_file(split)}); run `dvc repro`, which fingerprints it again "
            "and reruns what reads it"
        )
    return rows, digest


def recorded_digest(root: Path, task: str, split: str) -> str:
    """The digest the data stage recorded for ``split`` of ``task``: what a stage reading it logs as its input."""
    recorded = TaskPaths(root, task).data_file(split)
    if not recorded.is_file():
        raise DataError(
            f"{recorded}: not found; the data stage fingerprints the task's data before the stages that read it: "
            f"run `dvc repro` (or `taso data --task {task}` first)"
        )
    return read_json(recorded)["digest"]
