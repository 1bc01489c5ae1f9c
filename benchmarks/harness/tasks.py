"""The GLUE tasks as the README's own-data example declares them, for every benchmark that trains on them."""

from __future__ import annotations

from pathlib import Path

from taso import data


def glue_specs(root: Path, max_train: int, max_eval: int) -> dict[str, data.TaskSpec]:
    """The GLUE tasks as the README's own-data example reads them: four classifications and STS-B,
    a regression over sentence pairs (a score 0-5)."""
    common = {
        "splits": {"train": "train.tsv", "eval": "dev.tsv"},
        "quoting": False,  # GLUE's TSVs hold bare, unbalanced quotes: text, not quoting
        "max_train": max_train,
        "max_eval": max_eval,
    }
    return {
        "rte": data.TaskSpec(
            name="rte",
            source=str(root / "rte"),
            text_fields=("sentence1", "sentence2"),
            labels=("entailment", "not_entailment"),
            **common,
        ),
        "mrpc": data.TaskSpec(
            name="mrpc",
            source=str(root / "mrpc"),
            text_fields=("#1 String", "#2 String"),
            label_field="Quality",
            labels=("0", "1"),
            metrics=("accuracy", "f1"),
            **common,
        ),
        "cola": data.TaskSpec(
            name="cola",
            source=str(root / "cola"),
            column_names=("source", "label", "original_label", "sentence"),
            text_fields=("sentence",),
            labels=("0", "1"),
            metrics=("matthews", "accuracy"),
            **common,
        ),
        "sst2": data.TaskSpec(
            name="sst2", source=str(root / "sst2"), text_fields=("sentence",), labels=("0", "1"), **common
        ),
        "stsb": data.TaskSpec(
            name="stsb",
            source=str(root / "stsb"),
            task_type="regression",
            text_fields=("sentence1", "sentence2"),
            label_field="score",
            metrics=("pearson", "spearman"),
            **common,
        ),
    }
