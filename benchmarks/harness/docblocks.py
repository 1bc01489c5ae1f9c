"""Tables in a doc that a script renders from its committed raw output, so a figure cannot drift from its source.

A block is everything between ``<!-- SCRIPT: NAME -->`` and ``<!-- end NAME -->`` on lines of their
own; :func:`fill` rewrites those blocks and nothing else.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def fill(doc: str, blocks: dict[str, str], script: str) -> str:
    """``doc`` with each of ``script``'s blocks replaced by ``blocks[NAME]``.

    Raises:
        ValueError: the doc holds a block of ``script`` that ``blocks`` lacks, or the other way round.
    """
    pattern = re.compile(rf"(<!-- {re.escape(script)}: (\w+) -->)\n(?:(.*?)\n)??(<!-- end \2 -->)", re.S)
    found = {m.group(2) for m in pattern.finditer(doc)}
    if missing := sorted(found - blocks.keys()):
        raise ValueError(
            f"the doc has {script} block(s) {', '.join(missing)} that the raw output given does not render"
        )
    if unused := sorted(blocks.keys() - found):
        raise ValueError(
            f"the doc has no {script} block for {', '.join(unused)}; "
            f"add <!-- {script}: NAME --> and <!-- end NAME --> lines where it goes"
        )
    return pattern.sub(lambda m: f"{m.group(1)}\n{blocks[m.group(2)]}\n{m.group(4)}", doc)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def render_into(doc: Path, blocks: dict[str, str], script: str) -> None:
    """Rewrite ``script``'s blocks of ``doc`` in place; a mismatch of blocks stops with its reason."""
    try:
        write_atomic(doc, fill(doc.read_text(), blocks, script))
    except ValueError as e:
        sys.exit(f"{script}: {doc}: {e}")
