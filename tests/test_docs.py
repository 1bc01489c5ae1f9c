"""The docs cite tests as evidence: every `tests/<file>.py::<name>` they name must exist."""

from __future__ import annotations

import ast
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
