"""Do core regions transfer across tasks? Train each GLUE task B on other tasks' masks.

For RTE, MRPC, CoLA and SST-2, each task B trains a masked LoRA (the pipeline's defaults:
rows_cols, p=0.25, rank 1) with
  (a) its own mask,
  (b) each other task's mask,
  (c) the union of the other three tasks' masks, cut to B's own budget per module by
      the others' merged importance,
  (d) a random mask with B's own row and column counts,
all with the same number of trainable parameters, and reports B's metric, mean ± std over
seeds. Importance is scored once per task (seed 0) on its calibration sample.

    python benchmarks/transfer.py --train-on sst2 --max-train 1000 --lr 1e-2   # docs/transfer.md
    python benchmarks/transfer.py --max-train 64 --max-eval 32 --seeds 0 --tasks rte mrpc \
        --results /tmp/smoke.json          # smoke run

Results go to the JSON file as they come (``--results``, with the settings they share), so
an interrupted run resumes where it stopped; a file made with other settings is refused.

This script is the small-budget version (one epoch over a sample, the pipeline's defaults) that
made docs/transfer.json. The full grid runs at the GLUE protocol with the TASO setting chosen by
the GLUE sweep: ``python benchmarks/glue.py --phase transfer`` (docs/transfer.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from harness.tasks import glue_specs  # noqa: E402

from taso import data, pretrained  # noqa: E402
from taso.evaluate import evaluate  # noqa: E402
from taso.importance import Importance, score_importance  # noqa: E402
from taso.io import read_json, write_json, write_text  # noqa: E402
from taso.masks import Mask, cut_to_budget, derive_rows_cols, merge_importance, random_like, union  # noqa: E402
from taso.methods import MethodConfig, Taso  # noqa: E402
from taso.train import TrainConfig, train  # noqa: E402

# The settings docs/transfer.json was made with: the pipeline's defaults before the GLUE sweep
# (rows_cols at p 0.25, rank 1); kept so that file can be reproduced. The sweep's setting runs in
# glue.py --phase transfer.
P, RANK, ALPHA, LR = 0.25, 1, 2.0, 3e-3
CALIBRATION = 128


def score(spec: data.TaskSpec, tok, bf16: bool = False) -> Importance:
    features = data.encode(data.read_rows(spec, "train", seed=0)[:CALIBRATION], tok, spec.max_length)
    # BERT's pooler head, as the runs in docs/transfer.json were made (the pipeline now reads the
    # model's declared mean pooling; a rerun with it is another set of results).
    model = pretrained.load_model("minilm", num_labels=spec.num_labels, seed=0, pooling="architecture")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return score_importance(model, data.iterate(features, 16, tok.pad_token_id))


def run_one(spec: data.TaskSpec, mask: Mask, seed: int, tok, cache: dict, lr: float = LR, bf16: bool = False) -> dict:
    if spec.name not in cache:
        cache[spec.name] = {
            split: data.encode(data.read_rows(spec, split, seed=0), tok, spec.max_length) for split in ("train", "eval")
        }
    feats = cache[spec.name]
    model = pretrained.load_model("minilm", num_labels=spec.num_labels, seed=seed, pooling="architecture")
    method = Taso(MethodConfig(rank=RANK, alpha=ALPHA, seed=seed))
    model = method.prepare(model, mask)
    start = time.perf_counter()
    # The head at lr, as the recorded runs trained it (before train.head_lr had a default of its own).
    cfg = TrainConfig(lr=lr, head_lr=None, seed=seed, bf16=bf16)
    train(model, feats["train"], cfg, method=method, pad_id=tok.pad_token_id, progress=False)
    result = evaluate(model, feats["eval"], spec.metrics, pad_id=tok.pad_token_id)
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def settings(args) -> dict:
    """What every run in a results file shares; resuming with other settings would mix them."""
    return {
        "max_train": args.max_train,
        "max_eval": args.max_eval,
        "lr": args.lr,
        "p": P,
        "rank": RANK,
        "alpha": ALPHA,
        "calibration": CALIBRATION,
    }


def load_runs(path: Path, wanted: dict) -> dict:
    """The runs already in ``path`` (none if it does not exist); refuse a file made with other settings."""
    if not path.is_file():
        return {}
    saved = read_json(path)
    if saved.get("settings") != wanted:
        sys.exit(
            f"{path} holds runs made with {saved.get('settings')}, not {wanted}; "
            "pass another --results file (or the same settings) so that runs are not mixed"
        )
    return saved["runs"]


def save_runs(path: Path, wanted: dict, runs: dict) -> None:
    write_json(path, {"settings": wanted, "runs": runs})


def conditions(b: str, tasks: list[str], masks: dict[str, Mask], imps: dict[str, Importance], seed: int):
    """(name, mask) for task ``b``: own, each other task's, the cut union of the others, random."""
    others = [t for t in tasks if t != b]
    yield "own", masks[b]
    for a in others:
        yield f"mask of {a}", masks[a]
    if len(others) > 1:
        cut = cut_to_budget(union([masks[a] for a in others]), masks[b], merge_importance([imps[a] for a in others]))
        yield "union of others, cut", cut
    yield "random", random_like(masks[b], seed=1000 + seed)


def table(results: dict, tasks: list[str], specs: dict[str, data.TaskSpec]) -> str:
    rows = sorted({c for b in results for c in results[b]}, key=_order)
    head = "| mask \\ task B | " + " | ".join(f"{t} ({specs[t].metrics[0]})" for t in tasks) + " |"
    lines = [head, "|---|" + "---|" * len(tasks)]
    for cond in rows:
        cells = []
        for b in tasks:
            runs = results.get(b, {}).get(cond, {})
            values = [r[specs[b].metrics[0]] for r in runs.values()]
            if not values:
                cells.append("—")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}")
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _order(cond: str) -> tuple[int, str]:
    return ({"own": 0, "union of others, cut": 2, "random": 3}.get(cond, 1), cond)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/glue"))
    parser.add_argument(
        "--tasks", nargs="+", default=["rte", "mrpc", "cola", "sst2"], help="tasks whose masks take part"
    )
    parser.add_argument("--train-on", nargs="+", help="tasks B to train (default: all of --tasks)")
    parser.add_argument("--lr", type=float, default=LR, help="adapter and head learning rate")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-train", type=int, default=500, help="train examples per task (seeded sample)")
    parser.add_argument("--max-eval", type=int, default=300, help="dev examples per task (seeded sample)")
    parser.add_argument("--results", type=Path, default=Path("docs/transfer.json"), help="raw results, per run")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    torch.manual_seed(0)
    specs = {t: s for t, s in glue_specs(args.data, args.max_train, args.max_eval).items() if t in args.tasks}
    tok = pretrained.load_tokenizer("minilm")
    wanted = settings(args)
    results = load_runs(args.results, wanted)
    imps = {t: score(specs[t], tok) for t in args.tasks}
    masks = {t: derive_rows_cols(imps[t], P) for t in args.tasks}
    cache: dict = {}
    trained = args.train_on or args.tasks
    for seed in args.seeds:
        for b in trained:
            for cond, mask in conditions(b, args.tasks, masks, imps, seed):
                done = results.setdefault(b, {}).setdefault(cond, {})
                if str(seed) in done:
                    continue
                done[str(seed)] = run_one(specs[b], mask, seed, tok, cache, lr=args.lr)
                print(f"{b:5} seed {seed} {cond:24} {json.dumps(done[str(seed)])}", file=sys.stderr, flush=True)
                save_runs(args.results, wanted, results)
    text = table(results, trained, specs)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
