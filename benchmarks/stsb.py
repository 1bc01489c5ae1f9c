"""STS-B (sentence-pair similarity, 0-5) through the pipeline's own stages, beside the untrained model.

The reference first: all-MiniLM-L6-v2 with no training at all, each sentence embedded alone and
the pair scored by cosine similarity, on every dev pair, for each way of reading a sentence
vector (the model's declared mean pooling, the CLS state, BERT's pooler output). Then each
method trains with params.yaml's defaults (max_train 2000, seeded subset) through
calibrate → score → derive-mask → train → evaluate in a scratch project, and is scored on all
dev pairs. A trained adapter that does not beat the untrained cosine has learned nothing useful.

    python benchmarks/stsb.py                       # about 5 min a run on 2 cores; resumable
    python benchmarks/stsb.py --no-run --out docs/results-stsb.md
    python benchmarks/stsb.py --settings taso --seeds 0 --max-steps 3 --results /tmp/s.jsonl   # smoke

Each finished run is a line of ``--results``; a run already there (same setting, seed and
protocol) is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import yaml  # noqa: E402
from harness import probe  # noqa: E402
from harness.store import append, key, load  # noqa: E402
from harness.tables import cell  # noqa: E402

from taso import data  # noqa: E402
from taso.io import write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASK = {
    "task_type": "regression",
    "splits": {"train": "train.tsv", "eval": "dev.tsv"},
    "quoting": False,
    "text_fields": ["sentence1", "sentence2"],
    "label_field": "score",
    "metrics": ["pearson", "spearman"],
    "max_train": 2000,
    "mask_source": "own",
}
# Each setting: overrides of params.yaml's sections ("task": of the task's block); its defaults are the point.
# The default head for a regression over pairs is the cosine of the two texts pooled apart.
SETTINGS = {
    "taso": {},
    "lora-r1": {"train": {"method": "lora", "rank": 1, "alpha": 2.0}},
    "taso, cross-encoder head (the pair as one sequence, mean pooled)": {"task": {"head": "classifier"}},
    "taso, BERT pooler head (one sequence; the head before issue 24)": {
        "task": {"head": "classifier"},
        "model": {"pooling": "architecture"},
    },
}


def zero_shot(spec: data.TaskSpec) -> dict[str, dict[str, float]]:
    """Pearson and Spearman of the untrained model's cosine similarity, per way of reading a sentence vector."""
    rows = data.read_rows(spec, "eval")
    return {
        f"zero-shot cosine, {name}": probe.zero_shot_cosine(spec, rows, name)
        for name in ("mean+normalize", "cls", "pooler")
    }


def run_one(overrides: dict, seed: int, source: Path, max_steps: int | None) -> dict:
    """One setting and seed through the pipeline's steps, in a scratch project."""
    from pipeline.steps import calibrate, derive_mask, evaluate, score, train
    from pipeline.steps import data as data_stage

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tasks"] = {"stsb": {**TASK, "source": str(source), **overrides.get("task", {})}}
    raw["compositions"] = {}
    raw["seed"] = seed
    raw["tracking"]["promote"] = "never"
    for section, values in overrides.items():
        if section != "task":
            raw[section] |= values
    if max_steps:
        raw["train"]["max_steps"] = max_steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        for stage in (data_stage, calibrate, score, derive_mask, train, evaluate):
            stage.run("stsb", root)
        scores = json.loads((root / "artifacts" / "stsb" / "metrics.json").read_text())
        trained = json.loads((root / "artifacts" / "stsb" / "train.json").read_text())
    return {**scores, "trainable_adapter": trained["trainable_adapter"], "final_loss": trained["final_loss"]}


def table(done: list[dict], reference: dict, settings, seeds: int) -> str:
    lines = ["| setting | dev Pearson | dev Spearman | runs |", "|---|---:|---:|---:|"]
    for name, r in reference.items():
        lines.append(f"| {name} (no training) | {100 * r['pearson']:.1f} | {100 * r['spearman']:.1f} | — |")
    for name in settings:
        runs = [r for r in done if r["setting"] == name]
        if runs:
            p, s = ([r[m] for r in runs] for m in ("pearson", "spearman"))
            lines.append(f"| {name} | {cell(p, seeds)} | {cell(s, seeds)} | {len(runs)} |")
    return (
        "# STS-B dev: the trained defaults beside the untrained model\n\n"
        "Written by `python benchmarks/stsb.py --no-run --out docs/results-stsb.md` from the runs in\n"
        "docs/results-stsb.jsonl (`python benchmarks/stsb.py` reruns or resumes them). Each run trains\n"
        "with params.yaml's defaults on 2,000 seeded training pairs through the pipeline's own stages;\n"
        "the head for a regression over pairs is the cosine of the two texts pooled apart, unless the\n"
        "setting says otherwise.\n\n" + "\n".join(lines) + "\n\nFigures × 100, mean ± std over seeds "
        "(a row with fewer runs than seeds says n); all 1,500 dev pairs."
    )


def _same_protocol(a: dict | None, b: dict) -> bool:
    """Two protocols are the same if they agree with params.yaml's values parsed: a run stays
    valid when only a comment in params.yaml changed (the text is kept in each run for the record)."""

    def parsed(p: dict) -> dict:
        return {**p, "params": yaml.safe_load(p["params"])}

    return a is not None and parsed(a) == parsed(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "../shared/datasets/glue/stsb")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, help="cap each run (smoke runs only)")
    parser.add_argument("--results", type=Path, default=ROOT / "docs/results-stsb.jsonl")
    parser.add_argument("--out", type=Path, help="the markdown table")
    parser.add_argument("--no-run", action="store_true", help="write the table from the runs so far")
    args = parser.parse_args()

    source = args.data.resolve()
    spec = data.TaskSpec(
        name="stsb",
        source=str(source),
        task_type="regression",
        text_fields=("sentence1", "sentence2"),
        label_field="score",
        metrics=("pearson", "spearman"),
        splits=TASK["splits"],
        quoting=False,
    )
    protocol = {"task": TASK, "max_steps": args.max_steps, "params": (ROOT / "params.yaml").read_text()}
    reference = zero_shot(spec)
    print(json.dumps(reference), file=sys.stderr, flush=True)
    done = [r for r in load(args.results) if _same_protocol(r.get("protocol"), protocol)]
    if not args.no_run:
        for seed in args.seeds:
            for name in args.settings:
                if any(r["setting"] == name and r["seed"] == seed for r in done):
                    continue
                k = key("stsb", "stsb", {"setting": name}, seed, protocol)
                record = {"key": k, "setting": name, "seed": seed, "protocol": protocol}
                record |= run_one(SETTINGS[name], seed, source, args.max_steps)
                append(args.results, record)
                done.append(record)
                print(json.dumps({k: v for k, v in record.items() if k != "protocol"}), file=sys.stderr, flush=True)
    text = table(done, reference, args.settings, len(args.seeds))
    print(text)
    if args.out:
        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
