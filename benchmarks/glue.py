"""TASO against LoRA on GLUE with the embedded MiniLM, each method tuned on the same held-out slices.

One protocol for every method: max length 128 with dynamic padding, batch 16, 3 epochs, AdamW,
linear schedule with 6% warmup, the task head trainable, LoRA scale alpha/r = 2.

  --phase sweep   MRPC and SST-2, seed 0: every method trains on its train split minus a held-out
                  slice and is scored on that slice, over its learning-rate grid (which grows by
                  up to two rates past an end that wins, by the same rule for every method); TASO
                  also over its knobs (head warm-up, rank at equal budget, gamma, global budget,
                  calibration size), one at a time from its best base setting, then the knobs
                  that beat the base together (within LoRA r=1's budget).
  --phase report  every method with the setting that won the sweep (mean of the main metric over
                  the sweep tasks), trained on the whole train split and scored on the dev set, for
                  seeds 0 1 2 and all four tasks, plus a random mask with the chosen TASO counts.
                  Writes the table and TASO's differences to each method paired by seed, marked †
                  where their 95% t-interval excludes zero, and each method's step time and peak
                  RSS against LoRA r=1's (--out), and the plot of metric against trainable
                  parameters (--plot).
                  Refuses to start before the sweep is finished.
  --phase transfer  do core regions transfer across tasks? Each task B trains at the chosen TASO
                  setting with its own mask, each other task's, the others' union cut to its own
                  counts, and a random mask (the own and random runs are the report's); the table
                  of B's dev metric goes to --out.
  --phase budget  does the region matter? MRPC, CoLA and RTE dev, seeds 0 1 2: TASO's mask, IMP's
                  (rounds of 50 steps pruning half of what is left, rewound to θ0) and a random
                  mask at each --ps kept fraction, at the chosen TASO setting's rank (so parameters
                  grow with p), beside PEFT LoRA r=1, r=8 and head-only (the report's runs, shared);
                  the table, the paired gaps and each region's search time (--out), the curve (--plot);
                  --variants adds TASO's importance variants (below) at each p.
  --phase variants  does another importance help? The chosen TASO setting against its variants, LoSiA's
                  sensitivity × uncertainty score taken once (score.statistic sensitivity), q/k/v
                  rows in whole attention heads (mask.unit head) and, with --head-lr, the head warmed
                  up before scoring at that rate (score.head_warmup_lr), on the sweep tasks' held-out slices,
                  seeds 0 1 2, beside the untrained model's linear probe on the same slices; the table
                  and TASO's paired gaps to each (--out). A variant stays an option only where it beats
                  TASO beyond the seed spread.
  --phase head    the head's own rate: a head reading a normalised sentence vector (--pooling auto:
                  MiniLM's mean+normalize, unit length) moves its logits far less per step than one
                  reading BERT's tanh pooler, so at the adapter's rate it learns slowly (TASO's MRPC
                  held-out accuracy: 67.8 at 1e-3, 76.8 at 1e-2; docs/head-glue.md). TASO and
                  LoRA r=1 at their chosen settings with the head at each rate of --head-lrs (and at
                  the method's own), on the sweep tasks' held-out slices, seed 0 (or the held-out
                  slices of --tasks, over --seeds, when given: a tenth of train where the sweep set
                  none); the table and the rate with the best mean over both methods and tasks
                  (--out). Pass that rate to report/transfer/budget as --head-lr.
  --phase pairs   does a sentence pair's class read better from its cosine? The chosen TASO setting
                  (and --methods) with the architecture's head over the pair as one sequence and with
                  the cosine head (head: cosine, the two texts pooled apart, a logit per class on their
                  cosine) on MRPC's and RTE's held-out slices (RTE: a seeded tenth of its train split),
                  seeds 0 1 2, beside the untrained model read each way (a linear probe on the pooled
                  pair, and on the cosine); the table and each method's paired gaps cosine − one
                  sequence (--out). The pipeline's default for classified pairs follows this table.
  --phase status  runs nothing: the sweep's table so far (--out), with each method's current choice.

    python benchmarks/glue.py --phase sweep --jobs 2              # hours on 2 cores; resumable
    python benchmarks/glue.py --phase status --out docs/results-glue-sweep.md
    python benchmarks/glue.py --phase report --methods taso lora-r1 lora-r8 head full --jobs 2 --out docs/results-glue.md --plot docs/results-glue.png
    python benchmarks/glue.py --phase report --pooling auto --sweep-pooling architecture --head-lr 0.03 --methods taso lora-r1 lora-r8 head full --jobs 2   # the default head
    python benchmarks/glue.py --phase transfer --jobs 2 --out docs/transfer-glue.md
    python benchmarks/glue.py --phase budget --pooling auto --sweep-pooling architecture --head-lr 0.03 --jobs 2 --out docs/budget-glue.md --plot docs/budget-glue.png
    python benchmarks/glue.py --phase variants --pooling auto --sweep-pooling architecture --head-lr 0.03 --jobs 2 --out docs/variants-glue.md
    python benchmarks/glue.py --phase head --pooling auto --sweep-pooling architecture --jobs 2 --out docs/head-glue.md
    python benchmarks/glue.py --phase pairs --pooling auto --sweep-pooling architecture --head-lr 0.03 --jobs 2 --out docs/pairs-glue.md
    python benchmarks/glue.py --phase head --pooling architecture --methods taso --head-lrs --tasks rte --seeds 0 1 --jobs 2
    python benchmarks/glue.py --phase report --no-run --methods taso lora-r1 lora-r8 head full --out docs/results-glue.md
    python benchmarks/glue.py --quick --results /tmp/q.jsonl      # one task, one seed, 3 steps

Every finished run is one line of ``--results`` (JSON); a run already there (same phase, task,
method setting, seed and protocol) is skipped, so the grid carries over several sessions.
SST-2 uses a fixed seeded subset of 8000 training rows. ``--jobs 2`` runs two single-thread runs at
once; on 2 cores the gain over one two-thread run is small (about 1.1x on MRPC in one ad-hoc
timing), since the two runs share memory bandwidth. Each record says its jobs and threads; its
step times are those of a run sharing the machine, so step-time ratios belong to benchmarks/speed.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from harness import budget, probe  # noqa: E402
from harness.measure import PeakRSS  # noqa: E402
from harness.pool import InProcess, worker_init  # noqa: E402
from harness.report import (  # noqa: E402
    cost,
    head_table,
    label,
    paired,
    plot,
    sweep_table,
    table,
    transfer_settings,
    transfer_table,
)
from harness.store import append, key, load  # noqa: E402
from harness.sweep import (  # noqa: E402
    MAX_EXTEND,
    TASO_VARIANTS,
    as_key,
    chosen,
    grids_of,
    losia_variants,
    sweep_settings,
)
from harness.tasks import glue_specs  # noqa: E402

from pipeline.params import ScoreParams  # noqa: E402
from taso import data, pretrained  # noqa: E402
from taso.config import LosiaConfig  # noqa: E402
from taso.evaluate import evaluate  # noqa: E402
from taso.heads import warm_start_cosine  # noqa: E402
from taso.importance import Importance, default_loss, score_importance, warm_up_head  # noqa: E402
from taso.io import write_text  # noqa: E402
from taso.masks import Mask, cut_to_budget, derive_mask, merge_importance, union  # noqa: E402
from taso.methods import MethodConfig  # noqa: E402
from taso.methods import build as build_method  # noqa: E402
from taso.train import TrainConfig, train  # noqa: E402

WARMUP_LR = ScoreParams().head_warmup_lr  # the head warm-up's rate before scoring, as the pipeline's default
PROTOCOL = {"max_length": 128, "batch_size": 16, "epochs": 3, "warmup_ratio": 0.06, "alpha_per_rank": 2.0}
SWEEP_TASKS = ("mrpc", "sst2")
HELD_OUT = {"mrpc": 400, "sst2": 800}  # the sweep's held-out slice of each train split
SST2_TRAIN = 8000
# A setting's method as taso.methods names it; the other TASO-family settings (transfer, union)
# train TASO's masked LoRA on another task's mask, and lora-r<k> is PEFT LoRA at rank k.
METHOD_OF = {"head": "head", "full": "full", "taso": "taso", "random": "random", "losia": "losia", "imp": "imp"}


def split_rows(spec: data.TaskSpec, phase: str) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples: the sweep holds out a slice of train; the report scores on dev."""
    rows = data.read_rows(spec, "train", seed=0)
    if phase == "report":
        return rows, data.read_rows(spec, "eval", seed=0)
    shuffled = rows[:]
    random.Random(1234).shuffle(shuffled)
    held = min(HELD_OUT.get(spec.name, len(rows) // 10), len(rows) // 2)
    return shuffled[held:], shuffled[:held]


def trained_and_references(done: list[dict], phase: str) -> tuple[list[dict], list[dict]]:
    """``phase``'s records split into the trained runs and the untrained model's references."""
    runs = [r for r in done if r["phase"] == phase]
    return [r for r in runs if r["setting"]["method"] != "reference"], [
        r for r in runs if r["setting"]["method"] == "reference"
    ]


def majority_share(spec: data.TaskSpec, phase: str) -> float | None:
    """The accuracy of always predicting the commonest label on the phase's eval rows: chance
    (None for a regression, which has no commonest label)."""
    if spec.task_type == "regression":
        return None
    labels = [r["label"] for r in split_rows(spec, phase)[1]]
    return max(map(labels.count, set(labels))) / len(labels)


def head_of(spec: data.TaskSpec, s: dict | None = None) -> str:
    """The head setting ``s`` names (``head``), else the pipeline's default (``head: auto``): a
    regression over sentence pairs is the cosine of the two texts pooled apart, everything else the
    architecture's sequence head."""
    if s and "head" in s:
        return s["head"]
    return "cosine" if spec.task_type == "regression" and len(spec.text_fields) == 2 else "classifier"


def base_model(spec: data.TaskSpec, seed: int, head: str | None = None):
    """The base model with ``head`` (default: ``spec``'s), reading this process's pooling."""
    head = head or head_of(spec)
    return pretrained.load_model(
        "minilm", spec.task_type, num_labels=spec.num_labels, seed=seed, pooling=_POOLING, head=head
    )


def encode(spec: data.TaskSpec, rows: list[dict], tok, head: str | None = None) -> list[dict]:
    """``rows`` as ``head`` (default: ``spec``'s) reads them: a pair as one sequence, or apart."""
    return data.encode(rows, tok, PROTOCOL["max_length"], pairs_apart=(head or head_of(spec)) == "cosine")


def build(s: dict, spec: data.TaskSpec, train_feats: list[dict], tok, seed: int, sources=None, phase="report"):
    """The model to train for setting ``s``, the method (from taso.methods) that prepared it, and the
    seconds spent finding its region (None for a method without one)."""
    model = base_model(spec, seed, head_of(spec, s))
    name, rank = METHOD_OF.get(s["method"], "taso"), s.get("rank", 1)
    if s["method"].startswith("lora-"):
        name, rank = "lora", int(s["method"].split("-r")[1])
    losia = LosiaConfig(p=s["p"], start=s["start"]) if name == "losia" else LosiaConfig()
    config = MethodConfig(rank=rank, alpha=PROTOCOL["alpha_per_rank"] * rank, seed=seed, losia=losia)
    method = build_method(name, config)
    # LoSiA's warm start trains from the mask TASO's chosen setting derives (its "region").
    region = {**s["region"], "method": "taso"} if "region" in s else s
    start, mask = time.perf_counter(), None
    if method.needs:
        mask = method.region(mask_for(region, spec, train_feats, tok, seed, sources or {}, phase))
    seconds = round(time.perf_counter() - start, 1) if method.needs == "mask" else None
    return method.prepare(model, mask), method, seconds


def importance_for(s: dict, spec: data.TaskSpec, train_feats: list[dict], tok, seed: int) -> Importance:
    """TASO's importance for a task, scored on a calibration sample by a model of its own (as the
    pipeline's score stage does), so a head warm-up shapes the gradients but not the training."""
    scorer = base_model(spec, seed, head_of(spec, s))
    calib, statistic = train_feats[: s["calibration"]], s.get("statistic", "taylor")
    if head_of(spec, s) == "cosine" and spec.task_type == "classification":  # as the pipeline's score stage
        warm_start_cosine(
            scorer, data.iterate(calib, PROTOCOL["batch_size"], tok.pad_token_id), [f["labels"] for f in calib]
        )
    if s["warmup"]:
        batches = data.iterate(train_feats, PROTOCOL["batch_size"], tok.pad_token_id, seed=seed, shuffle=True)
        warm_up_head(scorer, batches, s["warmup"], lr=s.get("warmup_lr", WARMUP_LR), seed=seed)
    # An EMA weighs the last batches most, so its batches come in a seeded random order (as the pipeline's).
    batches = data.iterate(calib, PROTOCOL["batch_size"], tok.pad_token_id, seed=seed, shuffle=statistic != "taylor")
    return score_importance(scorer, batches, statistic=statistic)


def mask_for(s: dict, spec: data.TaskSpec, train_feats, tok, seed: int, sources: dict, phase: str) -> Mask:
    """The mask a TASO-family setting trains: the task's own (``taso``), a random one with its counts
    (``random``), another task's (``transfer``, from ``s["source"]``), or the union of other tasks'
    masks cut to the own mask's counts by their merged importance (``union``, ``s["sources"]``).
    Another task's importance is scored as that task's own run with this seed scores it."""

    def own() -> tuple[Importance, Mask]:
        imp = importance_for(s, spec, train_feats, tok, seed)
        return imp, derive_mask(imp, s["rule"], s["p"], s.get("unit", "row"))

    def other(name: str) -> Importance:
        feats = encode(sources[name], split_rows(sources[name], phase)[0], tok, head_of(sources[name], s))
        return importance_for(s, sources[name], feats, tok, seed)

    m = s["method"]
    if m == "imp":
        return imp_region(s, spec, train_feats, tok, seed)
    if m in ("taso", "random"):  # the random method draws its rows and columns from these counts itself
        return own()[1]
    if m == "transfer":
        return derive_mask(other(s["source"]), s["rule"], s["p"])
    if m == "union":
        imps = [other(a) for a in s["sources"]]
        merged = union([derive_mask(imp, s["rule"], s["p"]) for imp in imps])
        return cut_to_budget(merged, own()[1], merge_importance(imps))
    raise ValueError(f"unknown method {m!r}")


def imp_region(s: dict, spec: data.TaskSpec, train_feats, tok, seed: int) -> Mask:
    """IMP's last mask (taso.imp.search): rounds of ``s["steps"]`` steps at the run's rate from θ0,
    each pruning ``s["q"]`` of what is left by the update's magnitude, down to ``s["p"]``; the
    rounds' masks go to a scratch folder that is removed after."""
    import tempfile

    from taso.config import ImpConfig
    from taso.imp import round_trainer, search
    from taso.targets import find_targets

    cfg = train_config(s, seed, max_steps=s["steps"], epochs=1)
    config = MethodConfig(rank=s["rank"], alpha=PROTOCOL["alpha_per_rank"] * s["rank"], seed=seed)
    head = head_of(spec, s)
    trainer = round_trainer(lambda: base_model(spec, seed, head), train_feats, cfg, config, pad_id=tok.pad_token_id)
    shapes = {n: tuple(m.weight.shape) for n, m in find_targets(base_model(spec, seed, head)).items()}
    with tempfile.TemporaryDirectory() as scratch:
        mask, _ = search(shapes, trainer, ImpConfig(s["q"], s["steps"], s["imp_rule"]), s["p"], Path(scratch))
    return mask


def train_config(s: dict, seed: int, *, max_steps: int | None, epochs: int = PROTOCOL["epochs"]) -> TrainConfig:
    """The protocol's training knobs for setting ``s``. The head trains at ``s["head_lr"]`` where the
    setting names one (``--head-lr``), else at the method's rate, as every recorded setting before
    the pipeline's own head rate did: never at TrainConfig's default, which would change what a
    recorded key means."""
    return TrainConfig(
        lr=s["lr"],
        gamma=s.get("gamma", 0.5),
        head_lr=s.get("head_lr"),
        epochs=epochs,
        max_steps=max_steps,
        batch_size=PROTOCOL["batch_size"],
        warmup_ratio=PROTOCOL["warmup_ratio"],
        seed=seed,
    )


def run_one(s: dict, spec: data.TaskSpec, phase: str, seed: int, tok, max_steps: int | None, sources=None) -> dict:
    train_rows, eval_rows = split_rows(spec, phase)
    if s["method"] == "reference":  # the base model untrained: nothing trains, nothing to time
        scores = probe.reference(spec, train_rows, eval_rows, _POOLING, head=head_of(spec, s))
        return {**scores, "main": scores[spec.metrics[0]], "threads": torch.get_num_threads()}
    head = head_of(spec, s)
    train_feats, eval_feats = encode(spec, train_rows, tok, head), encode(spec, eval_rows, tok, head)
    model, method, region_seconds = build(s, spec, train_feats, tok, seed, sources, phase)
    cfg = train_config(s, seed, max_steps=max_steps)
    stamps: list[float] = []

    def timed_loss(model, batch):  # the time between two losses is one whole step
        stamps.append(time.perf_counter())
        return default_loss(model, batch)

    with PeakRSS() as rss:
        result = train(
            model, train_feats, cfg, method=method, pad_id=tok.pad_token_id, loss_fn=timed_loss, progress=False
        )
    scores = evaluate(model, eval_feats, spec.metrics, task_type=spec.task_type, pad_id=tok.pad_token_id)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        **scores,
        "main": scores[spec.metrics[0]],
        "trainable": {k: v for k, v in method.count_trainable(model).items() if k != "total"},
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "median_step_seconds": round(statistics.median(steps), 4) if steps else None,
        "peak_rss_mb": round(rss.peak / 2**20),
        "region_seconds": region_seconds,
        "threads": torch.get_num_threads(),
    }


_TOKENIZER = None
# What the classifier reads (pretrained.load_model's pooling), set per process by work(): the
# recorded runs read BERT's pooler ("architecture"); another pooling is another protocol.
_POOLING = "architecture"


def work(
    s: dict, spec: data.TaskSpec, phase: str, seed: int, max_steps: int | None, sources: dict, pooling: str
) -> dict:
    """One run, in whichever process executes it (the tokenizer is loaded once per process)."""
    global _TOKENIZER, _POOLING
    _TOKENIZER = _TOKENIZER or pretrained.load_tokenizer("minilm")
    _POOLING = pooling
    return run_one(s, spec, phase, seed, _TOKENIZER, max_steps, sources)


def execute(plan, specs, args, protocol, done: list[dict]) -> None:
    """Run every item of ``plan(done)`` not yet in ``done``, ``args.jobs`` at a time (each in a fresh
    process, so peak RSS is its own), appending each finished run to ``args.results``; the plan is
    asked again after each run, so items that depend on earlier results (the TASO variants) join as
    soon as they are known. A run that fails does not stop the others; the call ends with an error
    naming it, and a later call retries it."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    pooling = protocol.get("pooling", "architecture")
    if args.jobs == 1:
        worker_init(threads)
        pool = InProcess()
    else:
        pool = ProcessPoolExecutor(
            args.jobs,
            mp_context=get_context("spawn"),
            initializer=worker_init,
            initargs=(threads,),
            max_tasks_per_child=1,
        )
    running: dict[Future, dict] = {}
    failed: dict[str, str] = {}
    with pool:
        while True:
            busy = {r["key"] for r in done} | {r["key"] for r in running.values()} | set(failed)
            for phase, task, s, seed in plan(done):
                k = key(phase, task, s, seed, protocol)
                if len(running) >= args.jobs:
                    break
                if k not in busy:
                    record = {"key": k, "phase": phase, "task": task, "setting": s, "seed": seed, "protocol": protocol}
                    running[pool.submit(work, s, specs[task], phase, seed, args.max_steps, specs, pooling)] = record
                    busy.add(k)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                record = running.pop(future)
                try:
                    record |= future.result() | {"jobs": args.jobs}
                except Exception as exc:
                    failed[record["key"]] = (
                        f"{record['task']}, {label(record['setting'])}, seed {record['seed']}: {exc!r}"
                    )
                    print(f"glue.py: run failed: {failed[record['key']]}", file=sys.stderr, flush=True)
                    continue
                append(args.results, record)
                done.append(record)
                print(json.dumps(record), file=sys.stderr, flush=True)
    if failed:
        sys.exit(
            f"glue.py: {len(failed)} run(s) failed, not written (a later call retries them):\n"
            + "\n".join(failed.values())
        )


def pairs_phase(settings: dict[str, dict], specs, args, protocol, done: list[dict]) -> str:
    """Each of ``args.methods`` with the pair read as one sequence and by the cosine head, on the
    held-out slices of ``args.tasks`` (classified pairs), beside the untrained model read both ways;
    the table and, per method, cosine − one sequence paired by seed."""
    pairs = {m: (settings[m], {**settings[m], "head": "cosine"}) for m in args.methods}
    contenders = {name: s for m, (seq, cos) in pairs.items() for name, s in ((m, seq), (f"{m}-cosine", cos))}
    references = [{"method": "reference"}, {"method": "reference", "head": "cosine"}]
    plan = [("pairs", t, r, 0) for t in args.tasks for r in references]
    plan += [("pairs", t, s, seed) for seed in args.seeds for t in args.tasks for s in contenders.values()]
    if not args.no_run:
        execute(lambda done: plan, specs, args, protocol, done)
    held, refs = trained_and_references(done, "pairs")
    held = [r for r in held if r["seed"] in args.seeds]
    majority = {t: majority_share(specs[t], "pairs") for t in args.tasks}
    seeds = len(args.seeds)
    text = table(held, contenders, specs, args.tasks, seeds, majority, refs)
    for i, m in enumerate(pairs):
        two = {f"{m}-cosine": contenders[f"{m}-cosine"], m: contenders[m]}
        text += "\n\n" + paired(held, two, specs, args.tasks, seeds, ref=f"{m}-cosine", note=i == len(pairs) - 1)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/glue"))
    parser.add_argument(
        "--phase",
        choices=["sweep", "report", "transfer", "budget", "variants", "head", "pairs", "status"],
        default="sweep",
    )
    parser.add_argument(
        "--head-lrs", nargs="*", type=float, default=[3e-3, 1e-2, 3e-2, 1e-1], help="head: the head's rates to try"
    )
    parser.add_argument(
        "--head-lr",
        type=float,
        help="report/transfer/budget/variants: the head trains at this rate in every method but head-only "
        "(whose rate is the head's already); default: at the method's rate, as the recorded runs",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        help="report/transfer tasks (default: the four classifications, and STS-B in a report "
        "whose pooling is not architecture: the recorded runs' cross-encoder head is no head for a similarity); "
        "budget: MRPC, CoLA, RTE; head: the sweep tasks (another task is scored on a tenth of its train split)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="report/transfer/budget/variants seeds (default 0 1 2; head: 0)"
    )
    parser.add_argument("--max-steps", type=int, help="cap each run (smoke runs only: breaks the protocol)")
    parser.add_argument("--results", type=Path, default=Path("docs/results-glue.jsonl"))
    parser.add_argument("--out", type=Path, help="report, transfer or status phase: the markdown table")
    parser.add_argument("--plot", type=Path, help="report phase: metric against trainable parameters (PNG)")
    parser.add_argument(
        "--quick", action="store_true", help="MRPC (and RTE for transfer) only, 64/32 examples, 3 steps, sweep first"
    )
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="report/transfer: write the table (and plot) from the runs recorded so far, run nothing",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each on cpu_count/jobs threads")
    parser.add_argument(
        "--pooling",
        default="architecture",
        help="what the classifier reads (taso.pretrained.load_model): architecture, the head of the runs in "
        "docs/results-glue.jsonl; auto, the model's declared mean pooling, as the pipeline's default (a new protocol)",
    )
    parser.add_argument(
        "--sweep-pooling",
        help="report/transfer: take each method's setting from the sweep run with this pooling (default: --pooling); "
        "architecture reuses the recorded sweep for a report with another head",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        help="sweep, report: only these methods (the sweep's names: taso, lora-r1, head, losia, ...); a report "
        "with taso also has its random-mask control, with losia its variants",
    )
    parser.add_argument(
        "--ps", nargs="+", type=float, default=[0.05, 0.1, 0.25], help="budget: the kept fractions of the curve"
    )
    parser.add_argument("--variants", action="store_true", help="budget: add TASO's importance variants at each p")
    args = parser.parse_args()

    # The methods a phase reads: a transfer only TASO's setting, a budget curve TASO's and its references.
    args.methods = args.methods or {
        "transfer": ["taso"],
        "variants": ["taso"],
        "head": ["taso", "lora-r1"],
        "pairs": ["taso"],
        "budget": ["taso", "lora-r1", "lora-r8", "head"],
    }.get(args.phase)
    limits = {"sst2": SST2_TRAIN}
    args.seeds = args.seeds or ([0] if args.phase == "head" else [0, 1, 2])
    if args.tasks is None and args.phase == "budget":
        args.tasks = ["mrpc", "cola", "rte"]
    if args.tasks is None and args.phase == "head":  # the slices the head rate was chosen on
        args.tasks = list(SWEEP_TASKS)
    if args.tasks is None and args.phase == "pairs":  # the classified pairs: paraphrase and entailment
        args.tasks = ["mrpc", "rte"]
    if args.tasks is None:
        pooled = args.phase == "report" and args.pooling != "architecture"
        args.tasks = ["mrpc", "sst2", "cola", "rte"] + (["stsb"] if pooled else [])
    if args.quick:
        tasks = ["mrpc", "rte"] if args.phase == "transfer" else ["mrpc"]
        args.max_steps, args.seeds, args.tasks, limits = 3, [0], tasks, {"mrpc": 64, "rte": 64}
        args.ps = args.ps[:1]
    protocol = {**PROTOCOL, "max_steps": args.max_steps, "limits": limits}
    if args.pooling != "architecture":  # the recorded runs' protocol has no pooling key: they read BERT's pooler
        protocol["pooling"] = args.pooling
    sweep_protocol = {k: v for k, v in protocol.items() if k != "pooling"}
    if (args.sweep_pooling or args.pooling) != "architecture":
        sweep_protocol["pooling"] = args.sweep_pooling or args.pooling
    specs = glue_specs(args.data, max_train=None, max_eval=64 if args.quick else None)
    specs = {t: dataclasses.replace(s, max_train=limits.get(t)) for t, s in specs.items()}
    if args.phase == "pairs":  # before any run: a single text has no pair to read apart
        wrong = [t for t in args.tasks if specs[t].task_type != "classification" or len(specs[t].text_fields) != 2]
        if wrong:
            sys.exit(f"glue.py: --phase pairs compares heads of classified sentence pairs; not: {', '.join(wrong)}")
    recorded = load(args.results)
    done = [r for r in recorded if r["protocol"] == protocol]
    # The records a method's setting is chosen from: this protocol's own, or another head's sweep.
    swept = done if sweep_protocol == protocol else [r for r in recorded if r["protocol"] == sweep_protocol]
    sweep_tasks = ["mrpc"] if args.quick else list(SWEEP_TASKS)

    def grids(protocol: dict) -> dict:
        # --quick: one learning rate per method and one TASO variant, so that every code path runs.
        return {m: g[:1] for m, g in grids_of(protocol).items()} if args.quick else grids_of(protocol)

    own_grids = {m: g for m, g in grids(protocol).items() if m in (args.methods or grids(protocol))}
    variants = TASO_VARIANTS[1:2] if args.quick else TASO_VARIANTS
    extend = 0 if args.quick else MAX_EXTEND

    def sweep(done, grids=own_grids):
        return [
            ("sweep", t, s, 0) for s in sweep_settings(done, sweep_tasks, grids, variants, extend) for t in sweep_tasks
        ]

    def planned(done, grids=own_grids):  # the sweep's settings, once each
        return list({as_key(item[2]): item[2] for item in sweep(done, grids)}.values())

    phases = (args.phase,)
    if args.quick and args.phase != "status":  # a quick run sweeps, then reports (or transfers, curves, compares)
        phases = (
            "sweep",
            args.phase if args.phase in ("transfer", "budget", "variants", "head", "pairs") else "report",
        )
    if "sweep" in phases:
        execute(sweep, specs, args, protocol, done)
    if "status" in phases:  # runs nothing: the sweep's table so far
        majority = {t: majority_share(specs[t], "sweep") for t in sweep_tasks}
        text = sweep_table(done, planned(done), specs, sweep_tasks, majority)
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
    if {"report", "transfer", "budget", "variants", "head", "pairs"} & set(phases):
        # Each method's setting from the sweep it was swept in: another head's recorded sweep for the
        # methods it holds, this protocol's own for the methods it adds (LoSiA).
        sources = [(swept, sweep_protocol, grids(sweep_protocol))]
        if sweep_protocol != protocol:
            sources.append((done, protocol, {m: g for m, g in grids(protocol).items() if m not in sources[0][2]}))
        settings = {}
        for records, proto, method_grids in sources:
            method_grids = {m: g for m, g in method_grids.items() if m in (args.methods or method_grids)}
            if not method_grids:
                continue
            keys = {r["key"] for r in records}
            left = [item for item in sweep(records, method_grids) if key(*item, proto) not in keys]
            if left:
                sys.exit(
                    f"glue.py: the sweep of {', '.join(method_grids)} is not finished ({len(left)} runs left in "
                    f"{args.results}); run --phase sweep first (--methods to sweep only those), or the settings "
                    "would be chosen on part of the grid"
                )
            settings |= chosen(records, sweep_tasks, planned(records, method_grids), methods=method_grids)
        settings |= losia_variants(settings)
        if args.head_lr:  # every method's head at one rate, but head-only's, whose rate is the head's
            settings = {m: s if m == "head" else {**s, "head_lr": args.head_lr} for m, s in settings.items()}
    if "head" in phases:  # held-out slices (the sweep's unless --tasks), in a phase of their own
        tried = {m: [settings[m], *({**settings[m], "head_lr": h} for h in args.head_lrs)] for m in args.methods}
        plan = [("head", t, s, seed) for seed in args.seeds for ss in tried.values() for s in ss for t in args.tasks]
        if not args.no_run:
            execute(lambda done: plan, specs, args, protocol, done)
        held = [r for r in done if r["phase"] == "head" and r["seed"] in args.seeds]
        majority = {t: majority_share(specs[t], "head") for t in args.tasks}
        text = head_table(held, tried, specs, args.tasks, majority, len(args.seeds))
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
    if "pairs" in phases:  # held-out slices, never the dev sets, in a phase of their own
        text = pairs_phase(settings, specs, args, protocol, done)
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
    if "report" in phases:
        if args.methods:  # the named methods (and their variants: random with taso, losia's with losia)
            of = {"random": "taso", "losia-r1budget": "losia", "losia-warm": "losia"}
            settings = {m: s for m, s in settings.items() if of.get(m, m) in args.methods}
        # The untrained references first (one each, deterministic: minutes, not hours), then seed by seed.
        report_plan = [("report", t, {"method": "reference"}, 0) for t in args.tasks]
        report_plan += [("report", t, s, seed) for seed in args.seeds for t in args.tasks for s in settings.values()]
        if not args.no_run:
            execute(lambda done: report_plan, specs, args, protocol, done)
        report, references = trained_and_references(done, "report")
        chance = {t: majority_share(specs[t], "report") for t in args.tasks}
        text = table(report, settings, specs, args.tasks, len(args.seeds), chance, references)
        if "losia-warm" in settings:  # does a start from TASO's mask help LoSiA? Warm minus random start
            starts = {m: settings[m] for m in ("losia-warm", "losia")}
            text += "\n\n" + paired(report, starts, specs, args.tasks, len(args.seeds), ref="losia-warm", note=False)
        if "taso" in settings:
            text += "\n\n" + paired(report, settings, specs, args.tasks, len(args.seeds))
        if "lora-r1" in settings:
            text += "\n\n" + cost(report, settings, args.tasks)
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
        if args.plot:
            plot(report, settings, specs, args.tasks, args.plot)
    if "budget" in phases:  # the report's runs at its own p and its references are shared: same keys
        curve = budget.settings(settings, args.ps, variants=args.variants)
        plan = [("report", t, s, seed) for seed in args.seeds for t in args.tasks for s in curve.values()]
        if not args.no_run:
            execute(lambda done: plan, specs, args, protocol, done)
        report = [r for r in done if r["phase"] == "report"]
        text = budget.table(report, curve, specs, args.tasks, len(args.seeds))
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
        if args.plot:
            budget.plot(report, curve, specs, args.tasks, args.plot)
    if "variants" in phases:  # the sweep's held-out slices, never the dev sets; a phase of its own, so
        # that its seeds 1 and 2 cannot enter the sweep's choice (which reads seed 0 per setting)
        contenders = {"taso": settings["taso"], **budget.variant_settings(settings["taso"])}
        # The untrained model's reference on the same slices first (the report's is on dev).
        plan = [("variants", t, {"method": "reference"}, 0) for t in sweep_tasks]
        plan += [("variants", t, s, seed) for seed in args.seeds for t in sweep_tasks for s in contenders.values()]
        if not args.no_run:
            execute(lambda done: plan, specs, args, protocol, done)
        held, references = trained_and_references(done, "variants")
        majority = {t: majority_share(specs[t], "variants") for t in sweep_tasks}
        text = table(held, contenders, specs, sweep_tasks, len(args.seeds), majority, references)
        text += "\n\n" + paired(held, contenders, specs, sweep_tasks, len(args.seeds))
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
    if "transfer" in phases:  # the report's own and random runs are shared: same phase, same settings
        taso = settings["taso"]
        plan = [
            ("report", b, s, seed)
            for seed in args.seeds
            for b in args.tasks
            for s in transfer_settings(taso, b, args.tasks)
        ]
        if not args.no_run:
            execute(lambda done: plan, specs, args, protocol, done)
        text = transfer_table([r for r in done if r["phase"] == "report"], taso, specs, args.tasks, len(args.seeds))
        print(text)
        if args.out:
            write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
