"""Artifact I/O: atomic writes, content digests, and safetensors reads that fail clearly.

Every artifact taso writes goes through a temporary path and an ``os.replace`` so that a
killed process never leaves a half-written file that DVC would cache as a valid output.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch and safetensors are imported by the functions that handle tensors: the JSON writers here
# serve the data stage too, which runs on every `dvc repro` and must start fast.


class ArtifactError(ValueError):
    """An artifact is missing, corrupt, or does not fit what it is used with."""


class InputFileError(FileNotFoundError):
    """A file or folder a user named (a model folder, an adapter folder) is missing or is not what it should be."""


# Files that mark a folder as one taso wrote (every output folder explains itself): replacing it
# loses nothing the tool cannot write again.
OWN_MARKERS = ("meta.json", "mask.safetensors", "adapter_config.json")


def check_replaceable(path: str | os.PathLike, force: bool = False) -> None:
    """Refuse to replace ``path`` with a new output unless it is absent, an empty folder, a folder
    taso wrote, or ``force`` is given; never the current folder or one above it, whatever ``force``.

    For destinations a user names (``--out``, ``--dest``): the stages' own artifact paths are
    replaced without asking, as DVC does.

    Raises:
        ArtifactError: naming the path and how to go on.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise ArtifactError(f"{path}: that is the current folder or one above it; name a new folder to write into")
    if force:
        return
    if path.is_dir() and not path.is_symlink():
        names = {p.name for p in path.iterdir()}
        if not names or (names & set(OWN_MARKERS) and ".git" not in names):
            return
    raise ArtifactError(
        f"{path} already exists and holds files taso did not write; name a new folder, or pass --force to replace it"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it into place only if the block succeeds.

    Works for files and for folders: whatever the block creates at the yielded path
    replaces ``path`` in one rename (a folder that already exists is removed first).
    Temporaries left by a writer that was killed (SIGKILL runs no cleanup) are removed
    the next time ``path`` is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _sweep_orphans(path: Path) -> None:
    """Remove temporaries of ``path`` whose writing process no longer exists."""
    prefix = f".{path.name}.tmp-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], fieldnames: Sequence[str]) -> None:
    """Write ``rows`` (dicts) as CSV with a header, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON object, naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); re-create it with the stage that made it") from e


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Save tensors with string metadata, atomically."""
    from safetensors.torch import save

    with atomic_path(path) as tmp:
        tmp.write_bytes(_canonical(save({k: v.contiguous() for k, v in tensors.items()}, metadata=dict(metadata))))


def _canonical(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes ``__metadata__`` from a hash map, so its order (and the file's bytes)
    changes from process to process; DVC would then see a re-derived but identical mask as
    modified and re-run everything downstream. Offsets are relative to the data section, so
    only the header changes; it stays space-padded to 8 bytes as the format asks.
    """
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + blob[8 + n :]


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and the metadata of a safetensors file.

    Raises:
        ArtifactError: the file is missing, truncated or not a safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactError(
            f"{path}: truncated or corrupt safetensors file ({e}); re-create it with the stage that wrote it"
        ) from e
    return tensors, metadata


def digest_tensors(tensors: Mapping[str, torch.Tensor], extra: Mapping[str, object] | None = None) -> str:
    """A sha256 over names, dtypes, shapes and bytes of ``tensors`` (sorted by name), plus ``extra``.

    The digest depends on content only, never on file layout or metadata, so two
    artifacts with the same tensors have the same digest.
    """
    import torch

    h = hashlib.sha256()
    if extra:
        h.update(json.dumps(extra, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def digest_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
