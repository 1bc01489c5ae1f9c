"""The resumable results store: one JSON line per finished run, keyed by a digest of what defines the run.

A killed grid resumes: runs already in the file are skipped, and a line a killed writer left torn is
ignored (its run is redone).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def key(*parts) -> str:
    """A short digest of what defines a run (JSON of ``parts``, keys sorted): equal parts, equal key."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True).encode()).hexdigest()[:16]


def load(path: Path) -> list[dict]:
    """The finished runs in ``path``; a line a killed writer left torn is skipped (its run is redone)."""
    runs = []
    for n, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            print(
                f"{path}:{n} is not a whole JSON line (a run cut off while written); ignoring it",
                file=sys.stderr,
            )
    return runs


def append(path: Path, record: dict) -> None:
    """One whole line per finished run (only the parent process writes); a torn last line is closed first."""
    with open(path, "ab+") as f:
        torn = f.seek(0, os.SEEK_END) > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"
        f.write((b"\n" if torn else b"") + (json.dumps(record) + "\n").encode())
