"""bf16 autocast against fp32 on real tasks: does it change RTE / MRPC, and how much time does it save?

Each arm scores importance and trains a masked LoRA (pipeline defaults) in its precision,
on the same data and seeds; the table gives the metric (mean ± std over seeds) and the
wall time of training, as a bf16 / fp32 ratio of medians.

    python benchmarks/precision.py --tasks sst2 mrpc --max-train 1000 --lr 1e-2   # docs/performance.md
    python benchmarks/precision.py --doc docs/performance.md     # the doc's table from docs/precision.json
    python benchmarks/precision.py --max-train 64 --max-eval 32 --seeds 0 --results /tmp/p.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import transfer  # the same GLUE specs, scoring and training as the transfer experiment
from harness.docblocks import render_into

from taso import pretrained
from taso.masks import derive_rows_cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/glue"))
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-train", type=int, default=500)
    parser.add_argument("--max-eval", type=int, default=300)
    parser.add_argument("--lr", type=float, default=transfer.LR)
    parser.add_argument("--results", type=Path, default=Path("docs/precision.json"))
    parser.add_argument("--doc", type=Path, help="run nothing: rewrite this doc's precision.py table from --results")
    args = parser.parse_args()
    if args.doc:
        render_into(args.doc, {"table": table(json.loads(args.results.read_text())["runs"])}, "precision.py")
        return

    specs = transfer.glue_specs(args.data, args.max_train, args.max_eval)
    tok = pretrained.load_tokenizer("minilm")
    wanted = transfer.settings(args)
    results = transfer.load_runs(args.results, wanted)
    cache: dict = {}
    for task in args.tasks:
        for arm in ("fp32", "bf16"):
            mask = derive_rows_cols(transfer.score(specs[task], tok, bf16=arm == "bf16"), transfer.P)
            for seed in args.seeds:
                done = results.setdefault(task, {}).setdefault(arm, {})
                if str(seed) not in done:
                    done[str(seed)] = transfer.run_one(
                        specs[task], mask, seed, tok, cache, lr=args.lr, bf16=arm == "bf16"
                    )
                    print(f"{task} {arm} seed {seed} {done[str(seed)]}", file=sys.stderr, flush=True)
                    transfer.save_runs(args.results, wanted, results)

    print(table({t: results[t] for t in args.tasks}))


def table(runs: dict) -> str:
    """The doc's table from the raw runs (task → arm → seed → figures): each task's first metric
    as mean ± std over seeds, and the ratio of median training times."""
    lines = ["| task (metric) | fp32 | bf16 | train time bf16 / fp32 |", "|---|---|---|---|"]
    for task, arms in runs.items():
        metric = next(k for k in next(iter(arms["fp32"].values())) if k not in ("n_examples", "seconds"))
        cells, times = [], {}
        for arm in ("fp32", "bf16"):
            done = list(arms[arm].values())
            values = [r[metric] for r in done]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}")
            times[arm] = statistics.median(r["seconds"] for r in done)
        lines.append(f"| {task} ({metric}) | {cells[0]} | {cells[1]} | {times['bf16'] / times['fp32']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
