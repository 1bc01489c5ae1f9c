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
  --phase status  runs nothing: the sweep's table so far (--out), with each method's current choice.

    python benchmarks/glue.py --phase sweep --jobs 2              # hours on 2 cores; resumable
    python benchmarks/glue.py --phase status --out docs/results-glue-sweep.md
    python benchmarks/glue.py --phase report --jobs 2 --out docs/results-glue.md --plot docs/results-glue.png
    python benchmarks/glue.py --phase transfer --jobs 2 --out docs/transfer-glue.md
    python benchmarks/glue.py --phase report --no-run --out docs/results-glue.md   # the table so far
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
import math
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
from harness.measure import PeakRSS  # noqa: E402
from harness.pool import InProcess, worker_init  # noqa: E402
from harness.store import append, key, load  # noqa: E402
from harness.tables import SPREAD_NOTE, cell, gap  # noqa: E402
from harness.tasks import glue_specs  # noqa: E402

from taso import data, pretrained  # noqa: E402
from taso.evaluate import evaluate  # noqa: E402
from taso.importance import Importance, default_loss, score_importance, warm_up_head  # noqa: E402
from taso.io import atomic_path, write_text  # noqa: E402
from taso.masks import Mask, cut_to_budget, derive_mask, merge_importance, union  # noqa: E402
from taso.methods import MethodConfig  # noqa: E402
from taso.methods import build as build_method  # noqa: E402
from taso.train import TrainConfig, train  # noqa: E402

PROTOCOL = {"max_length": 128, "batch_size": 16, "epochs": 3, "warmup_ratio": 0.06, "alpha_per_rank": 2.0}
SWEEP_TASKS = ("mrpc", "sst2")
HELD_OUT = {"mrpc": 400, "sst2": 800}  # the sweep's held-out slice of each train split
SST2_TRAIN = 8000
LR_GRID = {  # in the order the sweep runs them: the headline comparison first, full fine-tuning last
    "lora-r1": (3e-4, 1e-3, 3e-3),
    "taso": (1e-3, 3e-3, 1e-2),
    "head": (1e-3, 3e-3, 1e-2),
    "lora-r8": (1e-4, 3e-4, 1e-3),
    "full": (2e-5, 5e-5, 1e-4),
}
# A setting's method as taso.methods names it; the other TASO-family settings (transfer, union)
# train TASO's masked LoRA on another task's mask, and lora-r<k> is PEFT LoRA at rank k.
METHOD_OF = {"head": "head", "full": "full", "taso": "taso", "random": "random"}
MAX_EXTEND = 2  # rates a method's grid may grow by past a winning end, so no method is cut off by its grid
TASO_BASE = {"p": 0.25, "rank": 1, "gamma": 0.5, "warmup": 0, "rule": "rows_cols", "calibration": 256}
TASO_VARIANTS = (  # one knob at a time, at the base's best learning rate
    {"warmup": 200},  # head-only steps before scoring, so gradients are not those of a random head
    {"rank": 4},  # rank 4 at p 0.25: LoRA r=1's budget
    {"p": 0.5},  # half of LoRA r=1's budget at rank 1
    {"gamma": 0.0},
    {"gamma": 1.0},
    {"rule": "global"},  # rows and columns ranked across matrices
    {"calibration": 1024},
)


def setting(method: str, lr: float, **taso) -> dict:
    return {"method": method, "lr": lr, **({**TASO_BASE, **taso} if method in ("taso", "random") else {})}


def sweep_settings(done: list[dict], tasks, grids=LR_GRID, variants=TASO_VARIANTS, extend=MAX_EXTEND) -> list[dict]:
    """The sweep's settings in the order to run them. A method's learning-rate grid grows past
    whichever end wins (see :func:`lr_grid`); the TASO variants follow once TASO's grid is settled,
    at its best rate."""
    out = []
    for method, grid in grids.items():
        lrs, top = lr_grid(done, method, grid, tasks, extend)
        out += [setting(method, lr) for lr in lrs]
        if method == "taso" and top is not None:
            tried = [setting("taso", top, **v) for v in variants]
            out += tried
            both = combined(done, tasks, setting("taso", top), tried)
            out += [both] if both else []
    return out


def combined(done: list[dict], tasks, base: dict, variants: list[dict]) -> dict | None:
    """One setting with the knobs of every variant that beat ``base``, the largest gain first: a knob
    a better variant has set already is skipped, and so is one that would take the adapter past
    LoRA r=1's budget (p × rank > 1). None until every variant has run on every task, or when
    fewer than two knobs combine (the setting would be one already run)."""
    scores = means(done, tasks, lambda s: s == base or s in variants)
    if as_key(base) not in scores or any(as_key(v) not in scores for v in variants):
        return None
    gain = {as_key(v): scores[as_key(v)] - scores[as_key(base)] for v in variants}
    gains = sorted((v for v in variants if gain[as_key(v)] > 0), key=lambda v: -gain[as_key(v)])
    out, knobs = dict(base), set()
    for v in gains:
        (knob,) = (k for k in v if v[k] != base[k])
        trial = {**out, knob: v[knob]}
        if knob not in knobs and trial["p"] * trial["rank"] <= 1:
            out, knobs = trial, knobs | {knob}
    return out if len(knobs) > 1 else None


def lr_grid(done: list[dict], method: str, grid, tasks, extend: int) -> tuple[list[float], float | None]:
    """``method``'s learning rates so far, and the best of them once they are settled (else None): every rate has run on every
    task and the best is inside the grid (or the grid has grown by ``extend`` points already). A best
    rate at an end adds the next rate on the 1-3-10 ladder past it, the same rule for every method."""
    lrs = list(grid)
    for grown in range(extend + 1):
        scores = means(done, tasks, lambda s: s in [setting(method, lr) for lr in lrs])
        if len(scores) < len(lrs):
            return lrs, None
        top = json.loads(max(sorted(scores), key=scores.get))["lr"]
        tied = list(scores.values()).count(max(scores.values())) > 1  # an end that only ties does not grow the grid
        if grown == extend or tied or top not in (lrs[0], lrs[-1]) or len(lrs) == 1:
            return lrs, top
        if top == lrs[-1]:
            lrs.append(ladder(top, +1))
        else:
            lrs.insert(0, ladder(top, -1))
    raise AssertionError("unreachable")


def ladder(lr: float, step: int) -> float:
    """The learning rate ``step`` rungs from ``lr`` on the ladder 1e-5, 3e-5, 1e-4, 3e-4, ..."""
    rung = round(2 * math.log10(lr)) + step
    return float(f"{(3 if rung % 2 else 1) * 10 ** (rung // 2):.0e}")


def as_key(s: dict) -> str:
    """A setting as sorted JSON: the same setting gives the same string however its keys were ordered."""
    return json.dumps(s, sort_keys=True)


def means(done: list[dict], tasks, where) -> dict[str, float]:
    """The mean main metric over ``tasks`` of each sweep setting ``where`` accepts that has run on
    every task, keyed by the setting as sorted JSON."""
    scores: dict[str, dict[str, float]] = {}
    for r in done:
        if r["phase"] == "sweep" and where(r["setting"]):
            scores.setdefault(as_key(r["setting"]), {})[r["task"]] = r["main"]
    return {k: statistics.mean(v[t] for t in tasks) for k, v in scores.items() if set(tasks) <= set(v)}


def best(done: list[dict], method: str, tasks, where=lambda s: True) -> dict | None:
    """The sweep setting of ``method`` with the highest mean main metric over ``tasks``."""
    scores = means(done, tasks, lambda s: s["method"] == method and where(s))
    return (
        json.loads(max(sorted(scores), key=scores.get)) if scores else None
    )  # sorted: ties break the same way every time


def split_rows(spec: data.TaskSpec, phase: str) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples: the sweep holds out a slice of train; the report scores on dev."""
    rows = data.read_rows(spec, "train", seed=0)
    if phase == "report":
        return rows, data.read_rows(spec, "eval", seed=0)
    shuffled = rows[:]
    random.Random(1234).shuffle(shuffled)
    held = min(HELD_OUT.get(spec.name, len(rows) // 10), len(rows) // 2)
    return shuffled[held:], shuffled[:held]


def majority_share(spec: data.TaskSpec, phase: str) -> float:
    """The accuracy of always predicting the commonest label on the phase's eval rows: chance."""
    labels = [r["label"] for r in split_rows(spec, phase)[1]]
    return max(map(labels.count, set(labels))) / len(labels)


def build(s: dict, spec: data.TaskSpec, train_feats: list[dict], tok, seed: int, sources=None, phase="report"):
    """The model to train for setting ``s`` and the method (from taso.methods) that prepared it."""
    model = pretrained.load_model("minilm", num_labels=spec.num_labels, seed=seed)
    name, rank = METHOD_OF.get(s["method"], "taso"), s.get("rank", 1)
    if s["method"].startswith("lora-"):
        name, rank = "lora", int(s["method"].split("-r")[1])
    method = build_method(name, MethodConfig(rank=rank, alpha=PROTOCOL["alpha_per_rank"] * rank, seed=seed))
    mask = method.region(mask_for(s, spec, train_feats, tok, seed, sources or {}, phase)) if method.needs else None
    return method.prepare(model, mask), method


def importance_for(s: dict, spec: data.TaskSpec, train_feats: list[dict], tok, seed: int) -> Importance:
    """TASO's importance for a task, scored on a calibration sample by a model of its own (as the
    pipeline's score stage does), so a head warm-up shapes the gradients but not the training."""
    scorer = pretrained.load_model("minilm", num_labels=spec.num_labels, seed=seed)
    if s["warmup"]:
        batches = data.iterate(train_feats, PROTOCOL["batch_size"], tok.pad_token_id, seed=seed, shuffle=True)
        warm_up_head(scorer, batches, s["warmup"], seed=seed)
    calib = train_feats[: s["calibration"]]
    return score_importance(scorer, data.iterate(calib, PROTOCOL["batch_size"], tok.pad_token_id))


def mask_for(s: dict, spec: data.TaskSpec, train_feats, tok, seed: int, sources: dict, phase: str) -> Mask:
    """The mask a TASO-family setting trains: the task's own (``taso``), a random one with its counts
    (``random``), another task's (``transfer``, from ``s["source"]``), or the union of other tasks'
    masks cut to the own mask's counts by their merged importance (``union``, ``s["sources"]``).
    Another task's importance is scored as that task's own run with this seed scores it."""

    def own() -> tuple[Importance, Mask]:
        imp = importance_for(s, spec, train_feats, tok, seed)
        return imp, derive_mask(imp, s["rule"], s["p"])

    def other(name: str) -> Importance:
        feats = data.encode(split_rows(sources[name], phase)[0], tok, PROTOCOL["max_length"])
        return importance_for(s, sources[name], feats, tok, seed)

    m = s["method"]
    if m in ("taso", "random"):  # the random method draws its rows and columns from these counts itself
        return own()[1]
    if m == "transfer":
        return derive_mask(other(s["source"]), s["rule"], s["p"])
    if m == "union":
        imps = [other(a) for a in s["sources"]]
        merged = union([derive_mask(imp, s["rule"], s["p"]) for imp in imps])
        return cut_to_budget(merged, own()[1], merge_importance(imps))
    raise ValueError(f"unknown method {m!r}")


def run_one(s: dict, spec: data.TaskSpec, phase: str, seed: int, tok, max_steps: int | None, sources=None) -> dict:
    train_rows, eval_rows = split_rows(spec, phase)
    train_feats = data.encode(train_rows, tok, PROTOCOL["max_length"])
    eval_feats = data.encode(eval_rows, tok, PROTOCOL["max_length"])
    model, method = build(s, spec, train_feats, tok, seed, sources, phase)
    cfg = TrainConfig(
        lr=s["lr"],
        gamma=s.get("gamma", 0.5),
        epochs=PROTOCOL["epochs"],
        max_steps=max_steps,
        batch_size=PROTOCOL["batch_size"],
        warmup_ratio=PROTOCOL["warmup_ratio"],
        seed=seed,
    )
    stamps: list[float] = []

    def timed_loss(model, batch):  # the time between two losses is one whole step
        stamps.append(time.perf_counter())
        return default_loss(model, batch)

    with PeakRSS() as rss:
        result = train(
            model, train_feats, cfg, method=method, pad_id=tok.pad_token_id, loss_fn=timed_loss, progress=False
        )
    scores = evaluate(model, eval_feats, spec.metrics, pad_id=tok.pad_token_id)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        **scores,
        "main": scores[spec.metrics[0]],
        "trainable": {k: v for k, v in method.count_trainable(model).items() if k != "total"},
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "median_step_seconds": round(statistics.median(steps), 4) if steps else None,
        "peak_rss_mb": round(rss.peak / 2**20),
        "threads": torch.get_num_threads(),
    }


_TOKENIZER = None


def work(s: dict, spec: data.TaskSpec, phase: str, seed: int, max_steps: int | None, sources: dict) -> dict:
    """One run, in whichever process executes it (the tokenizer is loaded once per process)."""
    global _TOKENIZER
    _TOKENIZER = _TOKENIZER or pretrained.load_tokenizer("minilm")
    return run_one(s, spec, phase, seed, _TOKENIZER, max_steps, sources)


def execute(plan, specs, args, protocol, done: list[dict]) -> None:
    """Run every item of ``plan(done)`` not yet in ``done``, ``args.jobs`` at a time (each in a fresh
    process, so peak RSS is its own), appending each finished run to ``args.results``; the plan is
    asked again after each run, so items that depend on earlier results (the TASO variants) join as
    soon as they are known. A run that fails does not stop the others; the call ends with an error
    naming it, and a later call retries it."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
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
                    running[pool.submit(work, s, specs[task], phase, seed, args.max_steps, specs)] = record
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


def chosen(done: list[dict], tasks, planned: list[dict]) -> dict[str, dict]:
    """Each method's winning setting among the ``planned`` sweep settings (TASO's over its base,
    variants and their combination; runs of settings the sweep no longer plans do not count), and
    a random mask with the chosen TASO setting's counts."""
    out = {m: best(done, m, tasks, lambda s: s in planned) for m in LR_GRID}
    if out["taso"]:
        out["random"] = {**out["taso"], "method": "random"}
    return {m: s for m, s in out.items() if s}


def label(s: dict) -> str:
    if s["method"] in ("taso", "random"):
        knobs = ", ".join(f"{k} {s[k]}" for k in ("p", "rank", "gamma", "warmup", "rule", "calibration"))
        return f"{s['method']} (lr {s['lr']:g}; {knobs})"
    return f"{s['method']} (lr {s['lr']:g})"


def table(
    report: list[dict], settings: dict[str, dict], specs: dict[str, data.TaskSpec], tasks, seeds: int, chance=None
) -> str:
    """Each method's dev metrics (mean ± std over seeds) and trainable parameters; ``chance`` (task ->
    majority-class accuracy) adds a reference row, so a metric near chance reads as such."""
    head = "| method | trainable (adapter + head [+ backbone]) | " + " | ".join(
        f"{t} ({'/'.join(specs[t].metrics)})" for t in tasks
    )
    lines = [head + " |", "|---|---:|" + "---:|" * len(tasks)]
    for s in settings.values():
        runs = [r for r in report if r["setting"] == s]
        if not runs:
            continue
        t = runs[0]["trainable"]
        cells = []
        for task in tasks:
            mine = [r for r in runs if r["task"] == task]
            cells.append(" / ".join(cell([r[m] for r in mine], seeds) for m in specs[task].metrics))
        budget = f"{t['adapter']:,} + {t['head']:,}" + (f" + {t['backbone']:,}" if t["backbone"] else "")
        lines.append(f"| {label(s)} | {budget} | " + " | ".join(cells) + " |")
    if chance:
        lines.append(
            "| majority class (reference, accuracy) | — | " + " | ".join(cell([chance[t]]) for t in tasks) + " |"
        )
    return "\n".join(lines)


# Two-sided 95% quantiles of Student's t by degrees of freedom (seeds - 1); past the table the last
# one is used, which only widens the interval, so a mark is never given too easily.


def by_seed(runs: list[dict], task: str) -> dict[int, float]:
    """``task``'s main metric in ``runs``, by seed."""
    return {r["seed"]: r["main"] for r in runs if r["task"] == task}


def paired(report: list[dict], settings: dict[str, dict], specs, tasks, seeds: int, ref: str = "taso") -> str:
    """``ref``'s main dev metric minus each other method's, paired by seed (the same seed shares the
    data order and head initialisation); see ``gap``."""
    head = f"| {ref} minus | " + " | ".join(f"{t} ({specs[t].metrics[0]})" for t in tasks) + " |"
    lines = [head, "|---|" + "---:|" * len(tasks)]
    mine = [r for r in report if r["setting"] == settings[ref]]
    for name, s in settings.items():
        if name == ref:
            continue
        other = [r for r in report if r["setting"] == s]
        cells = [gap(by_seed(mine, t), by_seed(other, t), seeds) for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + SPREAD_NOTE


def cost(report: list[dict], settings: dict[str, dict], tasks, ref: str = "lora-r1") -> str:
    """Each method's median step time as a multiple of ``ref``'s (paired by seed, median over seeds)
    and its median peak RSS, per task. Runs share the cores, so the figures are indicative only."""
    lines = ["| method: step time × " + ref + ", peak RSS MB | " + " | ".join(tasks) + " |"]
    lines.append("|---|" + "---:|" * len(tasks))
    base = {(r["task"], r["seed"]): r["median_step_seconds"] for r in report if r["setting"] == settings[ref]}
    for name, s in settings.items():
        cells = []
        for t in tasks:
            runs = [r for r in report if r["setting"] == s and r["task"] == t]
            ratios = [r["median_step_seconds"] / base[t, r["seed"]] for r in runs if (t, r["seed"]) in base]
            rss = [r["peak_rss_mb"] for r in runs]
            cells.append(f"{statistics.median(ratios):.2f}× / {statistics.median(rss):,.0f}" if ratios else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(done: list[dict], planned: list[dict], specs, tasks) -> str:
    """The sweep so far: each planned setting's held-out main metric per task, "…" where a run is
    still to come, and a mark on each method's current choice."""
    picks = chosen(done, tasks, planned)
    head = "| setting | " + " | ".join(f"{t} held-out {specs[t].metrics[0]}" for t in tasks) + " | mean |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 1)]
    majority = [cell([majority_share(specs[t], "sweep")]) for t in tasks]
    lines.append("| majority class (reference) | " + " | ".join(majority) + " | |")
    for s in planned:
        got = {r["task"]: r["main"] for r in done if r["phase"] == "sweep" and r["setting"] == s}
        cells = [f"{100 * got[t]:.1f}" if t in got else "…" for t in tasks]
        mean = f"{100 * statistics.mean(got.values()):.1f}" if set(tasks) <= set(got) else "…"
        mark = " **(chosen)**" if picks.get(s["method"]) == s else ""
        lines.append(f"| {label(s)}{mark} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def transfer_settings(taso: dict, b: str, tasks) -> list[dict]:
    """Task ``b``'s masks for the transfer table, all at the chosen TASO setting: its own, each other
    task's, the others' union cut to its own counts (with two or more others), and a random one."""
    others = [a for a in tasks if a != b]
    out = [taso, *({**taso, "method": "transfer", "source": a} for a in others)]
    if len(others) > 1:
        out.append({**taso, "method": "union", "sources": others})
    return [*out, {**taso, "method": "random"}]


def condition(s: dict) -> str:
    names = {"taso": "own mask", "union": "union of the others, cut to own counts", "random": "random, own counts"}
    return names.get(s["method"]) or f"mask of {s['source']}"


def transfer_table(report: list[dict], taso: dict, specs, tasks, seeds: int) -> str:
    """Task B's main dev metric (mean ± std over seeds) for each mask it trained with; then each
    borrowed mask's metric minus B's own, paired by seed (see ``gap``)."""
    got: dict[str, dict[str, dict[int, float]]] = {}
    for b in tasks:
        for s in transfer_settings(taso, b, tasks):
            got.setdefault(condition(s), {})[b] = by_seed([r for r in report if r["setting"] == s], b)
    order = [
        "own mask",
        *(f"mask of {a}" for a in tasks),
        "union of the others, cut to own counts",
        "random, own counts",
    ]
    names = [n for n in order if n in got]
    head = " | ".join(f"{b} ({specs[b].metrics[0]})" for b in tasks) + " |"
    lines = ["| mask \\ task B | " + head, "|---|" + "---:|" * len(tasks)]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(cell(list(got[name].get(b, {}).values()), seeds) for b in tasks) + " |"
        )
    own = got.get("own mask", {})
    diffs = ["| mask minus own mask | " + head, "|---|" + "---:|" * len(tasks)]
    for name in names[1:]:
        cells = [gap(got[name][b], own.get(b, {}), seeds) if b in got[name] else "—" for b in tasks]
        diffs.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(diffs) + "\n\n" + SPREAD_NOTE


def plot(report: list[dict], settings: dict[str, dict], specs, tasks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, s in settings.items():
            runs = [r for r in report if r["setting"] == s and r["task"] == task]
            if not runs:
                continue
            n = sum(runs[0]["trainable"].values())
            values = [100 * r["main"] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar(n, statistics.mean(values), yerr=spread, fmt="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_title(f"{task} ({specs[task].metrics[0]})")
        ax.set_xlabel("trainable parameters")
    axes[0][0].set_ylabel("dev metric (%)")
    # The legend goes on the last panel, with the handles of the fullest one (a partial report may
    # have no runs of the last task yet).
    handles, names = max((ax.get_legend_handles_labels() for ax in axes[0]), key=lambda hl: len(hl[0]))
    axes[0][-1].legend(handles, names, fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/glue"))
    parser.add_argument("--phase", choices=["sweep", "report", "transfer", "status"], default="sweep")
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "sst2", "cola", "rte"], help="report/transfer tasks")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="report/transfer seeds")
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
    args = parser.parse_args()

    limits = {"sst2": SST2_TRAIN}
    if args.quick:
        tasks = ["mrpc", "rte"] if args.phase == "transfer" else ["mrpc"]
        args.max_steps, args.seeds, args.tasks, limits = 3, [0], tasks, {"mrpc": 64, "rte": 64}
    protocol = {**PROTOCOL, "max_steps": args.max_steps, "limits": limits}
    specs = glue_specs(args.data, max_train=None, max_eval=64 if args.quick else None)
    specs = {t: dataclasses.replace(s, max_train=limits.get(t)) for t, s in specs.items()}
    done = [r for r in load(args.results) if r["protocol"] == protocol]
    sweep_tasks = ["mrpc"] if args.quick else list(SWEEP_TASKS)

    # --quick: one learning rate per method and one TASO variant, so that every code path runs.
    grids = {m: g[:1] for m, g in LR_GRID.items()} if args.quick else LR_GRID
    variants = TASO_VARIANTS[1:2] if args.quick else TASO_VARIANTS
    extend = 0 if args.quick else MAX_EXTEND

    def sweep(done):
        return [
            ("sweep", t, s, 0) for s in sweep_settings(done, sweep_tasks, grids, variants, extend) for t in sweep_tasks
        ]

    def planned(done):  # the sweep's settings, once each
        return list({as_key(item[2]): item[2] for item in sweep(done)}.values())

    phases = (args.phase,)
    if args.quick and args.phase != "status":  # a quick run sweeps, then reports (or transfers)
        phases = ("sweep", "transfer" if args.phase == "transfer" else "report")
    if "sweep" in phases:
        execute(sweep, specs, args, protocol, done)
    if "status" in phases:  # runs nothing: the sweep's table so far
        text = sweep_table(done, planned(done), specs, sweep_tasks)
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
    if "report" in phases or "transfer" in phases:
        keys = {r["key"] for r in done}
        left = [item for item in sweep(done) if key(*item, protocol) not in keys]
        if left:
            sys.exit(
                f"glue.py: the sweep is not finished ({len(left)} runs left in {args.results}); "
                "run --phase sweep first, or the settings would be chosen on part of the grid"
            )
        settings = chosen(done, sweep_tasks, planned(done))
    if "report" in phases:
        report_plan = [("report", t, s, seed) for seed in args.seeds for t in args.tasks for s in settings.values()]
        if not args.no_run:
            execute(lambda done: report_plan, specs, args, protocol, done)
        report = [r for r in done if r["phase"] == "report"]
        chance = {t: majority_share(specs[t], "report") for t in args.tasks}
        text = table(report, settings, specs, args.tasks, len(args.seeds), chance)
        if "taso" in settings:
            text += "\n\n" + paired(report, settings, specs, args.tasks, len(args.seeds))
        if "lora-r1" in settings:
            text += "\n\n" + cost(report, settings, args.tasks)
        print(text)
        if args.out:
            write_text(args.out, text + "\n")
        if args.plot:
            plot(report, settings, specs, args.tasks, args.plot)
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
