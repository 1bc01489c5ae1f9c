"""Bad input and stale artifacts stop with a message that names the problem and the fix, and lose nothing.

Data files (invalid UTF-8, a single-class train split, over-long inputs), importance files
that are truncated or not importance maps, masks that fit another base model or another
importance map, and adapters that belong to another mask. Stage-level cases run the stage
in-process on a temporary project; none of them needs a real model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from taso.data import DataError, TaskSpec, encode, read_rows
from taso.export import adapter_mask_digest, check_adapter_mask
from taso.importance import Importance
from taso.io import ArtifactError
from taso.masks import Mask, check_importance, derive_mask, shape_mismatch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"layer.0.q": (16, 8), "layer.0.mlp": (12, 16)}


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' cache of parsed files inside the test's own folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def importance(seed: int = 0, shapes=SHAPES, **meta: str) -> Importance:
    g = torch.Generator().manual_seed(seed)
    rows = {n: torch.rand(d_out, generator=g) for n, (d_out, _) in shapes.items()}
    cols = {n: torch.rand(d_in, generator=g) for n, (_, d_in) in shapes.items()}
    return Importance(rows, cols, None, dict(meta))


def spec(folder: Path, file: str, **kw) -> TaskSpec:
    return TaskSpec(
        **{"name": "t", "source": str(folder), "text_fields": ("sentence",), "labels": ("neg", "pos")},
        **{"splits": {"train": file, "eval": file}, **kw},
    )


# --- data ---------------------------------------------------------------------------------------

LATIN1 = "caf\xe9 au lait".encode("latin-1")  # é as one byte: not UTF-8


@pytest.mark.parametrize(
    ("file", "lines"),
    [
        ("train.tsv", [b"sentence\tlabel", b"good\tpos", LATIN1 + b"\tneg", b"fine\tpos"]),
        ("train.csv", [b"sentence,label", b"good,pos", LATIN1 + b",neg", b"fine,pos"]),
        (
            "train.jsonl",
            [
                b'{"sentence": "good", "label": "pos"}',
                b'{"sentence": "ok", "label": "neg"}',
                b'{"sentence": "' + LATIN1 + b'", "label": "neg"}',
            ],
        ),
    ],
)
def test_invalid_utf8_names_the_file_and_the_line(tmp_path, file, lines):
    path = tmp_path / file
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as e:
        read_rows(spec(tmp_path, file), "train")
    msg = str(e.value)
    assert msg.startswith(f"{path}: line 3, byte ") and "not valid UTF-8" in msg and "iconv" in msg, msg


def test_valid_multibyte_utf8_is_read(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ncafé ☕\tpos\nnaïve\tneg\n", encoding="utf-8")
    assert [r["text"] for r in read_rows(spec(tmp_path, "train.tsv"), "train")] == ["café ☕", "naïve"]


def test_single_class_train_split_names_the_file_and_the_label_column(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tverdict\ngood\tpos\nfine\tpos\ngreat\tpos\n")
    with pytest.raises(DataError) as e:
        read_rows(spec(tmp_path, "train.tsv", label_field="verdict"), "train")
    msg = str(e.value)
    assert str(path) in msg and "'verdict'" in msg and "label 'pos'" in msg and "at least two classes" in msg
    # Evaluation may hold one class (a slice of a benchmark); regression has no classes.
    assert len(read_rows(spec(tmp_path, "train.tsv", label_field="verdict"), "eval")) == 3
    path.write_text("sentence\tverdict\ngood\t0.5\nfine\t0.5\n")
    assert len(read_rows(spec(tmp_path, "train.tsv", label_field="verdict", task_type="regression"), "train")) == 2


def test_single_class_after_max_train_says_so(tmp_path):
    rows = [("good", "pos")] * 30 + [("bad", "neg")]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in rows))
    assert len(read_rows(spec(tmp_path, "train.tsv"), "train")) == 31
    errors = []
    for seed in range(5):  # the one "neg" row is rarely among the 2 kept
        try:
            read_rows(spec(tmp_path, "train.tsv", max_train=2), "train", seed)
        except DataError as e:
            errors.append(str(e))
    assert errors and "every train example (of the max_train=2 kept) has label 'pos'" in errors[0]


def test_truncation_is_counted_in_the_logs(tmp_path, caplog):
    from transformers import BertTokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    tok = BertTokenizer(vocab=str(tmp_path / "vocab.txt"))
    examples = [
        {"id": 0, "text": "a b", "label": 0},
        {"id": 1, "text": " ".join("a" * 20), "label": 1},
        {"id": 2, "text": "b", "text_pair": " ".join("b" * 20), "label": 0},
    ]
    examples[0]["text_pair"] = examples[1]["text_pair"] = "a"
    with caplog.at_level(logging.WARNING, logger="taso.data"):
        feats = encode(examples, tok, max_length=10)
    assert "2 of 3 examples are longer than 10 tokens and were truncated" in caplog.text
    assert [len(f["input_ids"]) for f in feats] == [6, 10, 10]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="taso.data"):
        encode(examples[:1], tok, max_length=10)
    assert "truncated" not in caplog.text  # nothing cut, nothing said


# --- importance files ---------------------------------------------------------------------------


def test_truncated_or_corrupt_importance_is_refused(tmp_path):
    path = tmp_path / "importance.safetensors"
    importance().save(path)
    whole = path.read_bytes()
    for broken in (whole[:-5], whole[: len(whole) // 2], b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"):
        path.write_bytes(broken)
        with pytest.raises(ArtifactError, match="truncated or corrupt safetensors file") as e:
            Importance.load(path)
        assert str(path) in str(e.value) and "re-create it" in str(e.value)


def test_a_file_that_is_not_an_importance_map_is_refused(tmp_path):
    mask = derive_mask(importance(), "rows_cols", 0.5)
    mask.save(tmp_path / "mask")
    with pytest.raises(ArtifactError, match=r"not a taso importance map \(tensor 'layer\.0\.\S+\.(rows|cols)'"):
        Importance.load(tmp_path / "mask" / "mask.safetensors")
    from safetensors.torch import save_file

    save_file({"layer.0.q.row": torch.ones(4)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(ArtifactError, match="incomplete importance map"):
        Importance.load(tmp_path / "half.safetensors")


# --- masks against models and importance maps ----------------------------------------------------


def test_shape_mismatch_names_modules_and_shapes():
    mask = derive_mask(importance(), "rows_cols", 0.25)
    assert shape_mismatch(mask, SHAPES) is None
    assert shape_mismatch(mask, {**SHAPES, "layer.0.q": (32, 8)}) == (
        "module layer.0.q has shape (16, 8) in the mask, (32, 8) in the model"
    )
    other = {"model.layers.0.q_proj": (16, 8), "layer.0.mlp": (12, 16)}
    got = shape_mismatch(mask, other)
    assert "mask modules not in the model: ['layer.0.q']" in got and "not in the mask: ['model.layers.0.q_proj']" in got


def test_check_importance_names_both_digests():
    own, other = importance(0), importance(1)
    mask = derive_mask(own, "rows_cols", 0.25)
    check_importance(mask, own)
    with pytest.raises(ArtifactError) as e:
        check_importance(mask, other)
    msg = str(e.value)
    assert own.digest in msg and other.digest in msg and "re-run derive-mask" in msg
    with pytest.raises(ArtifactError, match="records no importance digest"):
        check_importance(Mask(mask.modules), own)


def test_importance_digest_survives_save_and_load(tmp_path):
    own = importance(0, base_model="tiny")
    own.save(tmp_path / "importance.safetensors")
    derive_mask(own, "global", 0.3).save(tmp_path / "mask")
    check_importance(Mask.load(tmp_path / "mask"), Importance.load(tmp_path / "importance.safetensors"))


def test_a_killed_writers_temporary_is_swept_by_the_next_write(tmp_path):
    import subprocess
    import sys

    from taso.io import _sweep_orphans, atomic_path

    # A writer that dies by SIGKILL inside the block: its temporary stays behind.
    code = (
        "import os, signal, sys; from taso.io import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'out')!r}) as tmp:\n"
        "    tmp.mkdir(); (tmp / 'half').write_text('x'); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert [p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()] == [True]
    with atomic_path(tmp_path / "out") as live:
        live.mkdir()
        _sweep_orphans(tmp_path / "out")  # as a second writer would: a live writer's temporary stays
        assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- adapters against masks ---------------------------------------------------------------------


def fake_adapter(folder: Path, **taso_json) -> Path:
    """What the checks read of an adapter folder: PEFT's config and weights file, and taso.json."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "taso.json").write_text(json.dumps(taso_json))
    return folder


def test_check_adapter_mask_names_both_digests(tmp_path):
    mask, other = derive_mask(importance(0), "rows_cols", 0.25), derive_mask(importance(1), "rows_cols", 0.25)
    assert mask.digest != other.digest
    good = fake_adapter(tmp_path / "good", mask_digest=mask.digest)
    check_adapter_mask(good, mask)
    assert adapter_mask_digest(good) == mask.digest
    with pytest.raises(ArtifactError) as e:
        check_adapter_mask(good, other)
    msg = str(e.value)
    assert msg.startswith(str(good)) and mask.digest in msg and other.digest in msg and "re-run train" in msg
    with pytest.raises(ArtifactError, match=r"taso\.json: records no mask_digest"):
        check_adapter_mask(fake_adapter(tmp_path / "hand", mask=mask.digest), mask)
    with pytest.raises(ArtifactError, match=r"taso\.json: file not found"):
        check_adapter_mask(tmp_path / "nothing", mask)
    assert adapter_mask_digest(tmp_path / "nothing") is None


# --- the stages ---------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project root with one demo task and its own MLflow store; no artifacts yet."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tasks"] = {"sentiment": raw["tasks"]["sentiment"]}
    raw["compositions"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def set_task(root: Path, **task) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["tasks"]["sentiment"] |= task
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def test_derive_mask_refuses_a_file_mask_for_another_base_model(project, tmp_path_factory):
    from pipeline.steps import derive_mask as stage

    shapes = stage.target_shapes("minilm", "classification", 2, "all-linear")  # the real model's
    query = next(n for n in shapes if n.endswith("attention.self.query"))
    wider = {**shapes, query: (shapes[query][0] + 8, shapes[query][1])}
    published = tmp_path_factory.mktemp("published") / "mask"
    derive_mask(importance(0, shapes=wider), "rows_cols", 0.25).with_meta(base_model="wider@def").save(published)
    set_task(project, mask_source=f"file:{published}")
    with pytest.raises(ArtifactError) as e:
        stage.run("sentiment", project)
    msg = str(e.value)
    assert f"mask from file:{published} does not fit minilm (mask base model: wider@def)" in msg
    assert f"module {query} has shape (392, 384) in the mask, (384, 384) in the model" in msg
    assert not (project / "artifacts" / "sentiment" / "mask").exists()
    assert not (project / "mlflow.db").exists()  # refused before any run was logged


def test_train_refuses_a_mask_derived_from_other_importance(project):
    from pipeline.steps import train as stage

    art = project / "artifacts" / "sentiment"
    own, stale = importance(0), importance(1)
    own.save(project / "artifacts" / "importance" / "sentiment" / "importance.safetensors")
    derive_mask(stale, "rows_cols", 0.25).save(art / "mask")
    with pytest.raises(ArtifactError) as e:
        stage.run("sentiment", project)
    assert own.digest in str(e.value) and stale.digest in str(e.value) and "re-run derive-mask" in str(e.value)
    assert not (art / "adapter").exists()
    assert not (project / "mlflow.db").exists()  # refused before any run was logged


def test_evaluate_refuses_an_adapter_trained_on_another_mask(project):
    from pipeline.steps import evaluate as stage

    art = project / "artifacts" / "sentiment"
    mask, other = derive_mask(importance(0), "rows_cols", 0.25), derive_mask(importance(1), "rows_cols", 0.25)
    mask.save(art / "mask")
    fake_adapter(art / "adapter", mask_digest=other.digest)  # trained on another mask: one of them is stale
    (art / "train.json").write_text("{}")
    with pytest.raises(ArtifactError) as e:
        stage.run("sentiment", project)
    assert mask.digest in str(e.value) and other.digest in str(e.value) and "re-run train" in str(e.value)
    assert not (art / "metrics.json").exists()
    assert not (project / "mlflow.db").exists()  # refused before any model loaded or run was logged


def test_evaluate_depends_on_the_mask_it_checks():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "artifacts/${key}/mask" in stages["evaluate"]["do"]["deps"]
    assert "artifacts/importance/${key}" in stages["train"]["do"]["deps"]


# --- the registry -------------------------------------------------------------------------------


def test_pull_all_refuses_an_adapter_and_mask_that_do_not_belong_together(project, tmp_path):
    from pipeline import registry, tracking

    tracking.configure(project)
    mask, other = derive_mask(importance(0), "rows_cols", 0.25), derive_mask(importance(1), "rows_cols", 0.25)
    mask.save(tmp_path / "mask")
    meta = {"base_model": "minilm", "task_type": "classification"}
    for version, digest in enumerate((mask.digest, other.digest), 1):
        # The registry keeps folder names: the adapter folder must be called "adapter".
        adapter = fake_adapter(tmp_path / f"v{version}" / "adapter", mask_digest=digest)
        registry.register_adapter(name="taso-t", adapter_dir=adapter, mask_dir=tmp_path / "mask", meta=meta, tags={})
    got = registry.pull("models:/taso-t/1", tmp_path / "pulled", what="all")
    check_adapter_mask(got / "adapter", Mask.load(got / "mask"))
    with pytest.raises(ArtifactError) as e:
        registry.pull("models:/taso-t/2", tmp_path / "pulled", what="all")
    msg = str(e.value)
    assert msg.startswith("models:/taso-t/2: its adapter was trained on mask ")
    assert other.digest in msg and mask.digest in msg and "register adapter and mask again" in msg
    # The earlier pull is untouched and no temporary folder is left behind.
    assert adapter_mask_digest(tmp_path / "pulled" / "adapter") == mask.digest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled")]
    # Only the pair is checked: the adapter alone still pulls.
    registry.pull("models:/taso-t/2", tmp_path / "adapter-only")
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def test_saved_bytes_do_not_depend_on_the_process(tmp_path):
    # safetensors orders metadata by a per-process hash seed; DVC compares bytes.
    import subprocess
    import sys

    code = (
        "import sys, torch; from taso.io import save_safetensors\n"
        "save_safetensors(sys.argv[1], {'b': torch.arange(3), 'a': torch.ones(2)}, "
        "{k: k * 3 for k in 'zyxwvutsrqponm'})\n"
    )
    for i, seed in enumerate(("1", "2", "3")):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{i}.safetensors")], check=True, env=env)
    blobs = {(tmp_path / f"{i}.safetensors").read_bytes() for i in range(3)}
    assert len(blobs) == 1
    from taso.io import load_safetensors

    tensors, meta = load_safetensors(tmp_path / "0.safetensors")
    assert torch.equal(tensors["b"], torch.arange(3)) and meta["m"] == "mmm"
