"""The docs cite tests as evidence: every `tests/<file>.py::<name>` they name must exist."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"tests/(\w+\.py)::(\w+)")
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def _tests_in(file: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / file).read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def citations() -> list[tuple[str, str, str]]:
    return sorted(
        {(doc.name, file, name) for doc in DOCS for file, name in CITED.findall(doc.read_text())},
    )


def test_the_docs_cite_tests_at_all():
    assert len(citations()) > 20  # a pattern that stopped matching would make the check below vacuous


@pytest.mark.parametrize(("doc", "file", "name"), citations())
def test_every_test_a_doc_cites_exists(doc, file, name):
    assert (ROOT / "tests" / file).is_file(), f"{doc} cites tests/{file}, which does not exist"
    assert name in _tests_in(file), f"{doc} cites tests/{file}::{name}, which is not a test there"


def _rendered(monkeypatch) -> dict[str, dict[str, str]]:
    """docs/performance.md's blocks by the script that renders them, from the committed raw files."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import losia_gpu
    import precision
    import speed

    raw = {f: json.loads((ROOT / "docs" / f).read_text()) for f in ("speed.json", "speed-decoder.json")}
    return {
        "speed.py": {name: text for r in raw.values() for name, text in speed.render(r).items()},
        "precision.py": {"table": precision.table(json.loads((ROOT / "docs" / "precision.json").read_text())["runs"])},
        "losia_gpu.py": {"table": losia_gpu.table(json.loads((ROOT / "docs" / "losia-gpu.json").read_text()))},
    }


def test_performance_tables_are_rendered_from_the_committed_raw_output(monkeypatch):
    from_raw = _rendered(monkeypatch)
    from harness.docblocks import fill

    doc = (ROOT / "docs" / "performance.md").read_text()
    for script, blocks in from_raw.items():
        assert fill(doc, blocks, script) == doc, (
            f"docs/performance.md's {script} tables differ from the raw files they are rendered from; "
            "rerender them with the commands at the top of the doc"
        )


def test_the_ranks_table_is_rendered_from_the_committed_raw_output(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import ranks
    from harness.docblocks import fill

    doc = (ROOT / "docs" / "scale.md").read_text()
    blocks = ranks.render(json.loads((ROOT / "docs" / "ranks.json").read_text()))
    assert fill(doc, blocks, "ranks.py") == doc, (
        "docs/scale.md's ranks table differs from docs/ranks.json; rerender it with "
        "python benchmarks/ranks.py --render docs/ranks.json --doc docs/scale.md"
    )


def test_a_hand_edited_figure_is_caught_and_a_missing_block_named(monkeypatch):
    blocks = _rendered(monkeypatch)["speed.py"]
    from harness.docblocks import fill

    doc = (ROOT / "docs" / "performance.md").read_text()
    edited = re.sub(r"\*\*(\d)\.(\d)", lambda m: f"**{(int(m.group(1)) + 1) % 10}.{m.group(2)}", doc, count=1)
    assert edited != doc and fill(edited, blocks, "speed.py") == doc
    with pytest.raises(ValueError, match="no speed.py block for encoder"):
        fill(doc.replace("<!-- speed.py: encoder -->", "<!-- moved -->"), blocks, "speed.py")


def test_blocks_of_one_script_never_reach_into_another_scripts_block_of_the_same_name(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from harness.docblocks import fill

    doc = "<!-- a.py: table -->\n<!-- end table -->\ntext\n<!-- b.py: table -->\nold\n<!-- end table -->\n"
    once = fill(doc, {"table": "A"}, "a.py")
    assert once == doc.replace("<!-- a.py: table -->\n", "<!-- a.py: table -->\nA\n")
    assert (
        fill(fill(once, {"table": "B"}, "b.py"), {"table": "A"}, "a.py").count("text\n<!-- b.py: table -->\nB\n") == 1
    )


def test_readme_demo_figures_are_rendered_from_the_committed_demo_run(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import demo
    from harness.docblocks import fill

    readme = (ROOT / "README.md").read_text()
    blocks = demo.render(json.loads((ROOT / "docs" / "demo.json").read_text()))
    assert set(blocks) == {"tasks", "timing", "methods"}
    assert fill(readme, blocks, "demo.py") == readme, (
        "README's demo tables differ from docs/demo.json; rerender them with "
        "python benchmarks/demo.py --render docs/demo.json --doc README.md"
    )


GLUE_DATA = ROOT.parent / "shared" / "datasets" / "glue"


@pytest.mark.parametrize(
    ("args", "doc"),
    [
        (["--phase", "report", "--methods", "taso", "lora-r1", "lora-r8", "head", "full"], "results-glue.md"),
        (["--phase", "transfer"], "transfer-glue.md"),
        # glue.py's own example command, whose default --head-lrs are the rates the doc shows
        (["--phase", "head", "--pooling", "auto", "--sweep-pooling", "architecture"], "head-glue.md"),
        (
            ["--phase", "pairs", "--pooling", "auto", "--sweep-pooling", "architecture", "--head-lr", "0.03"],
            "pairs-glue.md",
        ),
    ],
)
def test_glue_tables_are_printed_from_the_committed_runs(args, doc, tmp_path):
    if not GLUE_DATA.is_dir():
        pytest.skip("the GLUE data (../shared/datasets/glue) is not on this machine; the tables need its labels")
    import subprocess
    import sys

    out = tmp_path / doc
    cmd = [sys.executable, str(ROOT / "benchmarks" / "glue.py"), *args, "--no-run", "--out", str(out)]
    done = subprocess.run([*cmd, "--data", str(GLUE_DATA)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_text() == (ROOT / "docs" / doc).read_text(), f"docs/{doc} differs from what glue.py prints"
