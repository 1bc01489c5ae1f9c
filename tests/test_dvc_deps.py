"""dvc.yaml's code deps match the code: every project module a stage imports, at any depth, is a dep.

DVC reruns a stage when a dep changes, so a module the stage imports but does not list is a
change that silently leaves stale artifacts behind. Imports are read from the source (every
``import`` statement, including those inside functions), not by running anything.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("taso", "pipeline", "stages")


def module_file(name: str) -> Path | None:
    """The source file of a project module (``taso.masks`` → ``taso/masks/__init__.py``), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path) -> set[Path]:
    """The project files ``path`` imports directly (a package's ``__init__`` too, as Python runs it)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                if (f := module_file(".".join(parts[:i]))) is not None:
                    out.add(f)
    return out


def closure(path: Path) -> set[Path]:
    """``path`` and every project file it imports, at any depth."""
    seen, todo = set(), [path]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo.extend(imported(f) - seen)
    return seen


def stage_modules() -> dict[str, tuple[Path, list[str]]]:
    """Each dvc.yaml stage: the module its command runs and its declared deps."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split("-m ", 1)[1].split()[0]
        out[name] = (module_file(module), body.get("deps", []))
    return out


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(stage_modules()))
def test_every_imported_module_is_a_dep(stage):
    module, deps = stage_modules()[stage]
    assert module is not None, f"{stage}: its command runs no module of this project"
    missing = sorted(p.relative_to(ROOT).as_posix() for p in closure(module) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage} imports modules its deps do not list: {missing}"


@pytest.mark.parametrize("stage", sorted(stage_modules()))
def test_every_listed_code_dep_exists(stage):
    _, deps = stage_modules()[stage]
    stale = [d for d in deps if d.split("/")[0] in PACKAGES and not (ROOT / d).exists()]
    assert not stale, f"dvc.yaml stage {stage} lists code that does not exist: {stale}"


def test_the_import_reader_sees_lazy_imports_and_a_dep_covers_only_its_own_tree():
    # The registry imports taso modules inside functions; a reader of top-level imports alone
    # would miss them, and the deps test above would pass on an incomplete closure.
    assert ROOT / "taso" / "export.py" in closure(ROOT / "pipeline" / "registry.py")
    assert covered(ROOT / "taso" / "masks" / "mask.py", ["taso/masks"])
    assert not covered(ROOT / "taso" / "io.py", ["taso/masks", "taso/io"])


def test_each_stage_depends_on_the_fingerprint_of_the_split_it_reads():
    # What a stage reads (pipeline.steps.data.read_split / recorded_digest) must be its dep, or an
    # edited data file would leave it stale; and no more, or an eval edit would retrain.
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    reads = {}
    for name, stage in stages.items():
        module = module_file(stage.get("do", stage)["cmd"].split("-m ", 1)[1].split()[0])
        step = ROOT / "pipeline" / "steps" / module.name
        text = step.read_text() if step.is_file() else ""
        reads[name] = set(re.findall(r'(?:read_split|recorded_digest)\(root, \w+(?:\.\w+)?, "(train|eval)"', text))
    deps = {
        name: {
            s
            for s in ("train", "eval")
            if f"artifacts/${{key}}/data/{s}.json" in stage.get("do", stage).get("deps", [])
        }
        for name, stage in stages.items()
    }
    for name in stages:
        assert deps[name] == reads[name], f"dvc.yaml stage {name}: reads {reads[name]} but depends on {deps[name]}"
    assert deps["train"] == {"train"} and deps["evaluate"] == {"eval"}
