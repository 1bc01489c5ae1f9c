"""TASO on a real decoder LM: SmolLM2-135M-Instruct on BoolQ, ARC-Easy and GSM8K, on the CPU.

For each task: zero-shot, dense LoRA r=1 and r=8 through ``peft`` (q/k/v/o and gate/up/down
of every block), and TASO (rows_cols masks from importance on a calibration sample) at a
quarter of LoRA r=1's budget (p 0.25, rank 1) and at its full budget (p 0.25, rank 4), and
LoSiA (a dense block per matrix, re-picked in training) at p 1/8 and at LoRA r=1's count. All
train one epoch on the same seeded subset with the answer-only loss, AdamW, linear schedule
with 6% warmup, and the same base learning rate. BoolQ and ARC are scored by the
log-likelihood of each option's answer text, GSM8K by exact match of the final number of a
greedy generation.

    python benchmarks/decoder.py --max-train arc-easy=300 gsm8k=100 --max-eval arc-easy=300 gsm8k=20 \
        --gsm8k-methods zero-shot taso-r1                                  # every method, seed 0
    python benchmarks/decoder.py --tasks boolq arc-easy --max-train arc-easy=300 --max-eval arc-easy=300 \
        --methods zero-shot lora-r1 taso-r1 losia losia-r1 --seeds 0 1 2   # the compared ones, seeds 1 2
    python benchmarks/decoder.py --max-train arc-easy=300 gsm8k=100 --max-eval arc-easy=300 gsm8k=20 \
        --gsm8k-methods zero-shot taso-r1 --seeds 0 1 2 --no-run --out docs/results-decoder.md  # the table
    python benchmarks/decoder.py --tasks boolq --max-train 16 --max-eval 8 --methods zero-shot taso-r1 \
        --results /tmp/smoke.jsonl                                         # smoke run

Every finished run is appended to ``--results`` (JSON lines, with its settings); a run whose
task, method, seed and settings are already there is skipped, so a killed grid resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from harness.store import append, key, load  # noqa: E402
from harness.tables import SPREAD_NOTE, cell, gap  # noqa: E402

from taso import causal_lm, data, pretrained  # noqa: E402
from taso.config import LosiaConfig  # noqa: E402
from taso.importance import score_importance  # noqa: E402
from taso.io import write_text  # noqa: E402
from taso.masks import derive_rows_cols  # noqa: E402
from taso.methods import MethodConfig  # noqa: E402
from taso.methods import build as build_method  # noqa: E402
from taso.subnet import p_for_budget  # noqa: E402
from taso.targets import find_targets  # noqa: E402
from taso.train import TrainConfig, train  # noqa: E402

ALPHA = 2.0  # LoRA scale alpha/r = 2 at r=1, as the pipeline's default
METHODS = {  # name -> (kind, rank, p)
    "zero-shot": ("none", 0, None),
    "lora-r1": ("lora", 1, None),
    "lora-r8": ("lora", 8, None),
    "taso-r1": ("taso", 1, 0.25),  # a quarter of LoRA r=1's trainable parameters
    "taso-r4": ("taso", 4, 0.25),  # the same number as LoRA r=1
    "losia": ("losia", 0, 0.125),  # LoSiA at the paper's rank factor
    "losia-r1": ("losia", 0, None),  # LoSiA at LoRA r=1's count (p from the model's shapes)
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def specs(root: Path, max_train: dict[str, int], max_eval: dict[str, int]) -> dict[str, data.TaskSpec]:
    """The three tasks as a params.yaml would declare them (``source`` is the folder of the files)."""
    instruction = {
        "task_type": "causal_lm",
        "text_fields": ("instruction", "input"),
        "label_field": "answer",
        "answer_template": "the correct answer is {}",
        "splits": {"train": "train.json", "eval": "test.json"},
    }
    return {
        "boolq": data.TaskSpec(
            name="boolq",
            source=str(root / "commonsense" / "boolq"),
            labels=("true", "false"),
            max_train=max_train["boolq"],
            max_eval=max_eval["boolq"],
            max_length=256,
            **instruction,
        ),
        "arc-easy": data.TaskSpec(
            name="arc-easy",
            source=str(root / "commonsense" / "arc-easy"),
            labels=("answer1", "answer2", "answer3", "answer4", "answer5"),  # a few questions have 3 or 5
            max_train=max_train["arc-easy"],
            max_eval=max_eval["arc-easy"],
            max_length=256,
            **instruction,
        ),
        "gsm8k": data.TaskSpec(
            name="gsm8k",
            source=str(root / "gsm8k"),
            task_type="causal_lm",
            text_fields=("question",),
            label_field="answer",
            metrics=("exact_match",),
            splits={"train": "train.jsonl", "eval": "test.jsonl"},
            max_train=max_train["gsm8k"],
            max_eval=max_eval["gsm8k"],
            max_length=384,
        ),
    }


def prepare(method: str, spec: data.TaskSpec, tok, train_feats: list[dict], args, seed: int):
    """The model for ``method`` and the taso method that prepared it: the base (zero-shot, no method),
    a PEFT LoRA, or a TASO masked LoRA (scored here)."""
    kind, rank, p = METHODS[method]
    model = pretrained.load_model(args.model, "causal_lm", seed=seed)
    if kind == "none":
        return model, None, {}
    if kind == "losia" and p is None:
        shapes = [tuple(m.weight.shape) for m in find_targets(model, TARGETS).values()]
        p = p_for_budget(shapes, sum(m + n for m, n in shapes))
    losia = LosiaConfig(p=p) if kind == "losia" else LosiaConfig()
    config = MethodConfig(rank=max(rank, 1), alpha=ALPHA * max(rank, 1), targets=TARGETS, seed=seed, losia=losia)
    adapter = build_method(kind, config)
    if adapter.needs != "mask":
        return adapter.prepare(model), adapter, {}
    start = time.perf_counter()
    calib = train_feats[: args.calibration]
    imp = score_importance(model, data.iterate(calib, args.batch_size, tok.pad_token_id), targets=TARGETS)
    model = adapter.prepare(model, derive_rows_cols(imp, p))
    return model, adapter, {"score_seconds": round(time.perf_counter() - start, 1)}


def run_one(task: str, method: str, spec: data.TaskSpec, tok, args, seed: int) -> dict:
    rows = {split: data.read_rows(spec, split, seed=0) for split in ("train", "eval")}
    train_feats = data.encode(rows["train"], tok, spec.max_length)
    model, adapter, extra = prepare(method, spec, tok, train_feats, args, seed)
    out: dict = {"trainable": adapter.count_trainable(model) if adapter else {"adapter": 0, "head": 0, "total": 0}}
    if adapter:
        cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, seed=seed, log_every=10)
        result = train(model, train_feats, cfg, method=adapter, pad_id=tok.pad_token_id, progress=False)
        out |= {"steps": result.steps, "train_seconds": round(result.seconds, 1)}
    start = time.perf_counter()
    scores = causal_lm.evaluate(
        model,
        tok,
        rows["eval"],
        spec.metrics,
        options=spec.options,
        batch_size=args.eval_batch_size,
        max_length=spec.max_length,
        max_new_tokens=args.max_new_tokens,
    )
    return {**out, **extra, **scores, "eval_seconds": round(time.perf_counter() - start, 1)}


def settings(args, task: str) -> dict:
    """What makes two runs of one task and method comparable (a changed knob means a new run)."""
    return {
        "model": args.model,
        "max_train": args.max_train[task],
        "max_eval": args.max_eval[task],
        "lr": args.lr,
        "batch_size": args.batch_size,
        "calibration": args.calibration,
        "max_new_tokens": args.max_new_tokens if task == "gsm8k" else None,
    }


def table(runs: list[dict], tasks: list[str], spec_of: dict[str, data.TaskSpec], seeds: int) -> str:
    """Each method's main metric per task, mean ± std over seeds; a cell with fewer than ``seeds``
    runs says how many it holds (zero-shot is one run for every seed)."""
    lines = [
        "| method | trainable params | " + " | ".join(f"{t} ({spec_of[t].metrics[0]})" for t in tasks) + " |",
        "|---|---:|" + "---:|" * len(tasks),
    ]
    for method in METHODS:
        cells, params = [], "—"
        for t in tasks:
            mine = sorted((r for r in runs if r["task"] == t and r["method"] == method), key=lambda r: r["seed"])
            if method == "zero-shot":
                mine = mine[:1]
            cells.append(cell([r[spec_of[t].metrics[0]] for r in mine], 1 if method == "zero-shot" else seeds))
            if mine:
                params = f"{mine[0]['trainable']['total']:,}"
        lines.append(f"| {method} | {params} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# LoSiA against the two methods issue 21 compares it with, at both its budgets.
GAPS = (("losia", "taso-r1"), ("losia", "lora-r1"), ("losia-r1", "taso-r1"), ("losia-r1", "lora-r1"))


def gaps(runs: list[dict], tasks: list[str], spec_of: dict[str, data.TaskSpec], seeds: int) -> str:
    """Each LoSiA row minus TASO r=1 and LoRA r=1 on the task's main metric, paired by seed (a pair
    with fewer than ``seeds`` seeds says how many it has), over the tasks where LoSiA ran; empty if none."""
    tasks = [t for t in tasks if any(r["task"] == t and r["method"] in dict(GAPS) for r in runs)]
    if not tasks:
        return ""

    def by_seed(method: str, task: str) -> dict[int, float]:
        return {r["seed"]: r[spec_of[task].metrics[0]] for r in runs if r["task"] == task and r["method"] == method}

    lines = ["| gap (points) | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for a, b in GAPS:
        lines.append(f"| {a} − {b} | " + " | ".join(gap(by_seed(a, t), by_seed(b, t), seeds) for t in tasks) + " |")
    return "\n".join(lines) + "\n\n" + SPREAD_NOTE


def per_task(items: list[str], defaults: dict[str, int]) -> dict[str, int]:
    """``["300"]`` sets every task, ``["arc-easy=300", "gsm8k=40"]`` the tasks named; others keep ``defaults``."""
    out = dict(defaults)
    for item in items:
        task, _, n = item.rpartition("=")
        if task and task not in out:
            raise SystemExit(f"unknown task {task!r} in {item!r}; tasks: {', '.join(out)}")
        out |= {t: int(n) for t in ([task] if task else out)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--model", default=pretrained.SMOLLM2)
    parser.add_argument("--tasks", nargs="+", default=["boolq", "arc-easy", "gsm8k"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--gsm8k-methods", nargs="+", default=["zero-shot", "lora-r1", "taso-r1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--max-train",
        nargs="+",
        default=[],
        help="train examples: N for every task, or TASK=N (default 600; GSM8K 200)",
    )
    parser.add_argument(
        "--max-eval", nargs="+", default=[], help="eval examples: N for every task, or TASK=N (default 400; GSM8K 60)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="base learning rate of every method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--calibration", type=int, default=128, help="TASO: train examples scored for importance")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="GSM8K: tokens generated per answer")
    parser.add_argument("--results", type=Path, default=Path("docs/results-decoder.jsonl"))
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--no-run", action="store_true", help="train nothing: the table from the runs already there")
    args = parser.parse_args()
    args.max_train = per_task(args.max_train, {"boolq": 600, "arc-easy": 600, "gsm8k": 200})
    args.max_eval = per_task(args.max_eval, {"boolq": 400, "arc-easy": 400, "gsm8k": 60})

    torch.set_num_threads(os.cpu_count() or 1)
    spec_of = specs(args.data, args.max_train, args.max_eval)
    tok = pretrained.load_tokenizer(args.model)
    done = {r["key"]: r for r in load(args.results)}
    for task in args.tasks:
        methods = [m for m in args.methods if task != "gsm8k" or m in args.gsm8k_methods]
        for seed in args.seeds:
            # The untrained model draws nothing at random: one zero-shot run stands for every seed.
            for method in [m for m in methods if m != "zero-shot" or seed == args.seeds[0]]:
                s = settings(args, task)
                k = key(task, method, seed, s)
                if k in done or args.no_run:
                    continue
                record = {"key": k, "task": task, "method": method, "seed": seed, "settings": s}
                record |= run_one(task, method, spec_of[task], tok, args, seed)
                args.results.parent.mkdir(parents=True, exist_ok=True)
                append(args.results, record)
                done[k] = record
                print(json.dumps(record), file=sys.stderr, flush=True)
    # The table reads the seeds asked for, so a grid half-way through more seeds cannot mix into it.
    current = [
        r
        for r in done.values()
        if r["settings"] == settings(args, r["task"]) and r["task"] in args.tasks and r["seed"] in args.seeds
    ]
    text = "\n\n".join(
        filter(
            None,
            [table(current, args.tasks, spec_of, len(args.seeds)), gaps(current, args.tasks, spec_of, len(args.seeds))],
        )
    )
    print(text)
    if args.out:
        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
