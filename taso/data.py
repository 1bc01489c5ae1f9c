"""Task specs, loading examples from local files, the hub or the demo suite, and batching.

An example is a dict ``{id, text, text_pair?, label}`` with ``label`` already an int (class
id) or float (regression). Everything about where a task's data lives and what its columns
are called is in :class:`TaskSpec`, so a bad spec fails here, naming the file and column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from taso import demo
from taso.names import NO_LENGTH_LIMIT

if TYPE_CHECKING:
    import torch

# torch and taso.causal_lm are imported where a batch or a decoder example is built, not here:
# params.yaml's schema uses TaskSpec, and the check `dvc repro` runs first must start fast.

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")  # the roles every task has: the stages train on one and score on the other
FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """The task's data does not match its spec."""


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data is and how to read it.

    Attributes:
        name: task name, used in artifact paths and registry names.
        source: ``demo:<task>``, ``hub:<repo id>[:<config>]`` (``hub:nyu-mll/glue:mrpc``), or a local folder.
        task_type: ``classification``, ``regression`` or ``causal_lm``.
        text_fields: one text, or two for sentence pairs; each a column, or a tuple of columns
            joined by a space into one text (``(("title", "body"),)``). For ``causal_lm`` the
            prompt's parts (an instruction and an optional input, joined by a blank line).
        label_field: the label column (for ``causal_lm``: the answer).
        labels: label values in id order (their string forms); None reads ids as ints. For
            ``causal_lm`` the options of a choice task (scored by log-likelihood); None
            makes it a generation task.
        answer_template: ``causal_lm`` only: the text the model learns, ``{}`` standing for the
            answer (``"the correct answer is {}"`` for the LLM-Adapters files).
        metrics: metric names; the first is the one that decides the champion.
        splits: split role (``train``, ``eval``) → file name in ``source`` (or hub split name).
        column_names: for header-less files (CoLA), the names of the columns in order.
        quoting: CSV/TSV only: fields may be quoted (``"a, b"`` is one field), as the format
            has it; False reads quotes as text (GLUE's TSVs, whose quotes are unbalanced).
        max_train / max_eval: keep only the first N examples after a seeded shuffle (None: all).
        max_length: tokens per example; longer inputs are truncated and counted.
    """

    name: str
    source: str
    task_type: str = "classification"
    text_fields: tuple[str | tuple[str, ...], ...] = ("text",)
    label_field: str = "label"
    labels: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "eval": "eval"})
    column_names: tuple[str, ...] | None = None
    quoting: bool = True
    max_train: int | None = None
    max_eval: int | None = None
    max_length: int = 128
    answer_template: str = "{}"

    @property
    def columns(self) -> list[str]:
        """Every column the task reads: its text columns (grouped ones too) and its label."""
        return [c for f in self.text_fields for c in ((f,) if isinstance(f, str) else f)] + [self.label_field]

    def text(self, row: dict, i: int) -> str:
        """Text ``i`` (0: the text, 1: its pair) of ``row``: a column, or grouped columns joined by a space."""
        field = self.text_fields[i]
        if isinstance(field, str):
            return str(row[field])
        return " ".join(str(row[c]) for c in field if str(row[c] or "").strip())

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels else 2

    def answer(self, value: str) -> str:
        """The target text of a ``causal_lm`` example whose answer is ``value``."""
        return self.answer_template.replace("{}", value)

    @property
    def options(self) -> list[str] | None:
        """The target texts a ``causal_lm`` choice task chooses between (None for generation)."""
        return [self.answer(v) for v in self.labels] if self.task_type == "causal_lm" and self.labels else None


def _read_local(spec: TaskSpec, split: str) -> tuple[list[dict], str]:
    path = Path(spec.source) / spec.splits[split]
    if not path.is_file():
        raise DataError(f"task {spec.name}: {split} file {path} not found (tasks.{spec.name}.splits.{split})")
    builder = FORMATS.get(path.suffix)
    if builder is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    if builder == "csv":
        return _read_delimited(spec, path), str(path)
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        # Inside the try: the json reader keeps undecodable bytes until a row is read.
        rows = [{k.lstrip("\ufeff"): v for k, v in r.items()} for r in ds]
    except Exception as e:  # datasets wraps parser errors in many types; name the file
        bad = _first_invalid_utf8(path) if builder != "parquet" else None
        if bad:  # the wrapped error says neither where nor what; find the line ourselves
            raise _not_utf8(path, *bad) from e
        if _no_rows(path, builder):  # datasets fails on empty files
            raise DataError(f"{path}: the {split} split is empty") from e
        raise DataError(f"{path}: could not be read as {builder} ({type(e).__name__}: {e})") from e
    return rows, str(path)


def _read_delimited(spec: TaskSpec, path: Path) -> list[dict]:
    """The rows of a CSV/TSV file, checked line by line: a bad line stops the read with its number and why.

    Python's csv module rather than ``datasets``: a parser error then says which line and what
    (``datasets`` wraps pandas' message deep in a chain). Every value stays text, as written.
    """
    tab = path.suffix == ".tsv"
    quoting = csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE
    if spec.quoting:
        hint = (
            f"a field that holds a {'tab' if tab else 'comma'} or a line break must be in double quotes; "
            f"if this file's quotes are plain text (GLUE's TSVs), set tasks.{spec.name}.quoting: false"
        )
    else:
        hint = f"tasks.{spec.name}.quoting is false, so quotes cannot protect a delimiter inside a field"
    rows: list[dict] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if tab else ",", quoting=quoting, strict=True)
            try:
                header = list(spec.column_names) if spec.column_names else next(reader, None)
                for fields in reader:
                    if not fields:  # a blank line
                        continue
                    if header is not None and len(fields) != len(header):
                        where = "columns" if spec.column_names else "header fields"
                        raise DataError(
                            f"{path}: line {reader.line_num}: expected {len(header)} fields (the {where}), "
                            f"saw {len(fields)}; {hint}"
                        )
                    rows.append(dict(zip(header, fields, strict=True)))
            except csv.Error as e:
                reason = str(e).replace("\t", "\\t")  # csv names the delimiter itself: a tab would vanish
                raise DataError(f"{path}: line {reader.line_num}: {reason}; {hint}") from e
    except UnicodeDecodeError as e:
        raise _not_utf8(path, *(_first_invalid_utf8(path) or (0, 0))) from e
    return rows


def _not_utf8(path: Path, line: int, column: int) -> DataError:
    return DataError(
        f"{path}: line {line}, byte {column} is not valid UTF-8; "
        "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _first_invalid_utf8(path: Path) -> tuple[int, int] | None:
    """``(line, byte)`` (both 1-based) of the first byte that is not UTF-8, or None when the file decodes.

    Line by line is exact: a newline byte is never part of a multi-byte UTF-8 sequence.
    """
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return number, e.start + 1
    return None


def _no_rows(path: Path, builder: str) -> bool:
    """Whether a JSON or parquet data file holds no examples (nothing, or an empty list or table)."""
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows == 0
        text = path.read_text(encoding="utf-8")
    except Exception:
        return False
    return "".join(text.split()) in ("", "[]", "{}")


def _read_hub(spec: TaskSpec, split: str) -> tuple[list[dict], str]:
    """Hub datasets: ``hub:nyu-mll/glue:mrpc`` → ``load_dataset("nyu-mll/glue", "mrpc", split=...)``.

    The config follows a colon because hub ids hold a slash (``owner/name``). Needs the network
    until ``datasets`` has the split cached."""
    import datasets

    name, _, config = spec.source[len("hub:") :].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=spec.splits[split])
    except Exception as e:  # offline, unknown dataset or split: datasets raises many types
        raise DataError(
            f"{spec.source}: could not load the {split} split {spec.splits[split]!r} ({type(e).__name__}: {e}); "
            "the source is hub:<repo id>[:<config>] (hub:nyu-mll/glue:mrpc); hub data needs the network "
            "(HF_DATASETS_OFFLINE=0) until datasets has it cached, or download the files and point "
            f"tasks.{spec.name}.source at their folder"
        ) from e
    return list(ds), spec.source


def read_rows(spec: TaskSpec, split: str, seed: int = 0) -> list[dict]:
    """Load ``split`` of a task as examples ``{id, text, text_pair?, label}``.

    Raises:
        DataError: missing file or column, unknown label value, invalid UTF-8, an empty
            split, or a classification train split with a single class, with the file,
            the column and the row (or line) named.
    """
    if split not in spec.splits:
        raise DataError(f"task {spec.name} has no {split!r} split (tasks.{spec.name}.splits)")
    if spec.source.startswith("demo:"):
        name = spec.source[len("demo:") :]
        limit = spec.max_train if split == "train" else spec.max_eval
        rows, origin = demo.demo_split(name, split, limit or (2000 if split == "train" else 400), seed), spec.source
    elif spec.source.startswith("hub:"):
        rows, origin = _read_hub(spec, split)
    else:
        rows, origin = _read_local(spec, split)
    if not rows:
        raise DataError(f"{origin}: the {split} split is empty")
    missing = [c for c in spec.columns if c not in rows[0]]
    if missing:
        raise DataError(
            f"{origin}: column(s) {missing} not found; columns are {sorted(rows[0])} "
            f"(set tasks.{spec.name}.text_fields / label_field)"
        )
    examples = [_example(spec, r, i, origin) for i, r in enumerate(rows)]
    limit = spec.max_train if split == "train" else spec.max_eval
    sampled = limit is not None and len(examples) > limit
    if sampled:
        random.Random(seed).shuffle(examples)
        examples = examples[:limit]
    if split == "train" and spec.task_type == "classification":
        _check_classes(spec, examples, origin, sampled)
    return examples


def _check_classes(spec: TaskSpec, examples: Sequence[dict], origin: str, sampled: bool) -> None:
    """Refuse a train split holding one class: the head would learn a constant and importance would be noise."""
    ids = {e["label"] for e in examples}
    if len(ids) == 1:
        (only,) = ids
        value = spec.labels[only] if spec.labels else only
        note = f" (of the max_train={spec.max_train} kept)" if sampled else ""
        raise DataError(
            f"{origin}: every train example{note} has label {value!r} in column {spec.label_field!r}; "
            f"a classifier needs at least two classes: check the file and tasks.{spec.name}.label_field"
        )


def _instruction(spec: TaskSpec, row: dict, i: int, origin: str) -> dict:
    """A ``causal_lm`` example: the prompt, the target text, and the label it is scored against."""
    parts = (spec.text(row, k) for k in range(len(spec.text_fields)))
    prompt = "\n\n".join(p for p in parts if p.strip())
    raw = str(row[spec.label_field]).strip()
    ex = {"id": row.get("id", row.get("idx", i)), "prompt": prompt}
    if spec.labels:
        if raw not in spec.labels:
            raise DataError(
                f"{origin}: row {i}, column {spec.label_field!r}: unknown answer {raw!r}; expected one of {list(spec.labels)}"
            )
        from taso import causal_lm

        offered = causal_lm.offered(spec.labels, prompt)
        return {**ex, "target": spec.answer(raw), "label": spec.labels.index(raw), "options": offered}
    return {**ex, "target": spec.answer(raw), "label": raw}


def _example(spec: TaskSpec, row: dict, i: int, origin: str) -> dict:
    if spec.task_type == "causal_lm":
        return _instruction(spec, row, i, origin)
    ex = {"id": row.get("id", row.get("idx", i)), "text": spec.text(row, 0)}
    if len(spec.text_fields) > 1:
        ex["text_pair"] = spec.text(row, 1)
    raw = row[spec.label_field]
    if spec.task_type == "regression":
        try:
            ex["label"] = float(raw)
        except (TypeError, ValueError) as e:
            raise DataError(f"{origin}: row {i}, column {spec.label_field!r}: {raw!r} is not a number") from e
    elif spec.task_type == "classification":
        if spec.labels:
            try:
                ex["label"] = spec.labels.index(str(raw))
            except ValueError as e:
                raise DataError(
                    f"{origin}: row {i}, column {spec.label_field!r}: unknown label {raw!r}; expected one of {list(spec.labels)}"
                ) from e
        else:
            where = f"{origin}: row {i}, column {spec.label_field!r}"
            fix = (
                f"name the classes in id order (tasks.{spec.name}.labels), "
                f"or set tasks.{spec.name}.task_type: regression if the label is a number to predict"
            )
            try:
                ex["label"] = int(raw)
            except (TypeError, ValueError) as e:
                raise DataError(f"{where}: {raw!r} is not a class id; {fix}") from e
            if not 0 <= ex["label"] < spec.num_labels:
                raise DataError(f"{where}: class id {raw} out of range 0..{spec.num_labels - 1}; {fix}")
    return ex


def calibration_sample(rows: Sequence[dict], n: int, seed: int) -> list[dict]:
    """``n`` of ``rows`` (all of them when fewer), drawn with ``seed``, in their original order."""
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[i] for i in chosen]


def to_jsonl(rows: Sequence[dict]) -> str:
    """``rows`` as JSON lines, keys sorted, so the same rows always give the same bytes."""
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)


def digest_rows(rows: Sequence[dict]) -> str:
    """sha256 of ``rows`` as :func:`to_jsonl` writes them: the same examples, the same digest."""
    return hashlib.sha256(to_jsonl(rows).encode()).hexdigest()


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file written by :func:`to_jsonl`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_max_length(tokenizer, max_length: int) -> None:
    """Refuse a ``max_length`` longer than the model's positions, which would fail mid-forward.

    Raises:
        DataError: naming the limit and the key to change.
    """
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < NO_LENGTH_LIMIT and max_length > limit:
        raise DataError(
            f"model.max_length {max_length} is more than the {limit} tokens this model takes "
            "(its tokenizer's model_max_length, else its config's max_position_embeddings); "
            f"set model.max_length to {limit} or less"
        )


def encode(examples: Sequence[dict], tokenizer, max_length: int, *, pairs_apart: bool = False) -> list[dict]:
    """Tokenize examples (no padding); log how many were truncated to ``max_length``.

    A sentence pair is one sequence (``[CLS] a [SEP] b``), or with ``pairs_apart`` two, the
    second under ``pair_``-prefixed keys (for a bi-encoder head, :class:`taso.heads.PairCosine`).
    Instruction examples (``causal_lm``) get token labels on their answer only (:func:`taso.causal_lm.encode`).
    """
    check_max_length(tokenizer, max_length)
    if examples and "prompt" in examples[0]:
        from taso import causal_lm

        return causal_lm.encode(examples, tokenizer, max_length)
    texts = [e["text"] for e in examples]
    pairs = [e["text_pair"] for e in examples] if examples and "text_pair" in examples[0] else None
    if pairs_apart and pairs is not None:
        first = encode([{"text": t, "label": e["label"]} for t, e in zip(texts, examples)], tokenizer, max_length)
        second = encode([{"text": t, "label": e["label"]} for t, e in zip(pairs, examples)], tokenizer, max_length)
        return [{**f, **{f"pair_{k}": v for k, v in g.items() if k != "labels"}} for f, g in zip(first, second)]
    full = tokenizer(texts, pairs, truncation=False)
    truncated = sum(len(ids) > max_length for ids in full["input_ids"])
    if truncated:
        log.warning(
            "%d of %d examples are longer than %d tokens and were truncated", truncated, len(examples), max_length
        )
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": e["label"]} for i, e in enumerate(examples)]


def collate(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest example (dynamic padding); instruction batches pad on the left."""
    import torch

    if isinstance(features[0].get("labels"), list):
        from taso import causal_lm

        return causal_lm.collate(features, pad_id)
    batch = {}
    for side in ("", "pair_"):  # a pair encoded apart pads each side to its own longest
        if f"{side}input_ids" not in features[0]:
            continue
        longest = max(len(f[f"{side}input_ids"]) for f in features)
        for key in (f"{side}input_ids", f"{side}token_type_ids", f"{side}attention_mask"):
            if key in features[0]:
                fill = pad_id if key.endswith("input_ids") else 0
                batch[key] = torch.tensor([f[key] + [fill] * (longest - len(f[key])) for f in features])
    labels = [f["labels"] for f in features]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    return batch


def batch_order(
    lengths: Sequence[int], batch_size: int, seed: int, *, shuffle: bool = True, group_by_length: bool = False
) -> list[list[int]]:
    """Indices of each batch for one epoch, a pure function of its arguments (so resume can replay it).

    With ``group_by_length``, examples are sorted by length inside shuffled windows of 50
    batches, so batches hold similar lengths and padding shrinks, while order stays random.
    """
    idx = list(range(len(lengths)))
    if shuffle:
        random.Random(seed).shuffle(idx)
    if group_by_length:
        window = batch_size * 50
        idx = [i for s in range(0, len(idx), window) for i in sorted(idx[s : s + window], key=lambda i: -lengths[i])]
    batches = [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    if group_by_length and shuffle:
        random.Random(seed + 1).shuffle(batches)
    return batches


def iterate(
    features: Sequence[dict],
    batch_size: int,
    pad_id: int,
    *,
    seed: int = 0,
    shuffle: bool = False,
    group_by_length: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield collated batches over ``features`` in the order of :func:`batch_order`."""
    lengths = [len(f["input_ids"]) for f in features]
    for b in batch_order(lengths, batch_size, seed, shuffle=shuffle, group_by_length=group_by_length):
        yield collate([features[i] for i in b], pad_id)
