"""Data-parallel speed on this machine: the shipped TASO default trained by one process against N
torchrun ranks, the same global batches.

    python benchmarks/ranks.py --json docs/ranks.json                 # about 5 minutes on 2 cores
    python benchmarks/ranks.py --render docs/ranks.json --doc docs/scale.md

Each launch trains real MiniLM with the default read from params.yaml (rank, alpha, rule, p,
pooling; the mask from two batches' importance) on fixed random batches of 16 × 128 tokens, for
``--warmup`` steps and then ``--steps`` timed ones; the figure is the median wall time of a timed
step on rank 0. One process runs torch's default threads (one per core); torchrun gives each rank
one thread, so N ranks on N cores use the same cores. Launches alternate (one process, N ranks,
one process, ...) ``--repeats`` times, so drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.docblocks import render_into, write_atomic  # noqa: E402

BATCH, TOKENS = 16, 128


def worker(args) -> None:
    """One launch: train and write rank 0's step times to ``args.out``."""
    import speed
    import torch

    from taso import distributed
    from taso.methods import MethodConfig
    from taso.methods import build as build_method
    from taso.train import TrainConfig, default_loss, train

    distributed.init()
    setting = speed.shipped(args.params)
    bench = speed.Bench(setting, speed.batches(2, TOKENS))
    method = build_method(
        "taso", MethodConfig(rank=setting["rank"], alpha=setting["alpha"], targets=setting["targets"])
    )
    model = method.prepare(bench.model(), bench.mask(setting["rule"], setting["p"]))
    total = args.warmup + args.steps + 1  # a step's time is from its loss call to the next one's
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (BATCH * total, TOKENS), generator=g).tolist()
    features = [{"input_ids": x, "labels": i % 2} for i, x in enumerate(ids)]
    stamps: list[float] = []

    def timed(m, batch):
        stamps.append(time.perf_counter())
        return default_loss(m, batch)

    cfg = TrainConfig(lr=1e-3, batch_size=BATCH, max_steps=total, seed=0, warmup_ratio=0.0)
    train(model, features, cfg, method=method, loss_fn=timed, progress=False)
    if distributed.is_main():
        steps = [b - a for a, b in zip(stamps[args.warmup :], stamps[args.warmup + 1 :], strict=False)]
        report = {"ranks": distributed.world(), "threads": torch.get_num_threads(), "step_s": steps}
        write_atomic(args.out, json.dumps(report) + "\n")
    distributed.close()


def launch(nproc: int, args, out: Path) -> dict:
    """Run one worker launch (plain for 1, torchrun for more) and read what rank 0 wrote."""
    own = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--params", str(args.params)]
    own += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*runner, *own] if nproc > 1 else [sys.executable, *own]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"ranks.py: a {nproc}-process launch failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def measure(args) -> dict:
    runs: dict[str, list] = {"1": [], str(args.nproc): []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for n in (1, args.nproc):
                got = launch(n, args, Path(tmp) / f"{n}-{i}.json")
                runs[str(n)].append(got)
                print(
                    f"ranks.py: {n} process(es), run {i}: {statistics.median(got['step_s']):.3f} s/step",
                    file=sys.stderr,
                )
    import speed
    import torch

    return {
        "setting": speed.shipped(args.params),
        "batch": [BATCH, TOKENS],
        "steps": args.steps,
        "warmup": args.warmup,
        "runs": runs,
        "command": " ".join(["python benchmarks/ranks.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }


def render(report: dict) -> dict[str, str]:
    """The doc's table from one raw report: median step per launch, and its median over launches."""
    runs = report["runs"]
    med = {n: statistics.median(statistics.median(r["step_s"]) for r in rs) for n, rs in runs.items()}
    lines = [
        f"Batch {report['batch'][0]} × {report['batch'][1]} tokens (global), {report['steps']} timed steps after "
        f"{report['warmup']}, {len(runs['1'])} alternating launches each, {report['machine']['cpus']} cores.",
        "",
        "| launch | threads per process | median step (per launch) | median | ratio to one process |",
        "|---|---:|---|---:|---:|",
    ]
    for n, rs in runs.items():
        per = ", ".join(f"{statistics.median(r['step_s']):.3f}" for r in rs)
        who = "one process" if n == "1" else f"torchrun, {n} ranks"
        lines.append(f"| {who} | {rs[0]['threads']} | {per} s | {med[n]:.3f} s | **{med[n] / med['1']:.3f}** |")
    return {"ranks": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the shipped default is read here")
    parser.add_argument("--nproc", type=int, default=2, help="ranks against one process")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the raw figures here (what --render reads)")
    parser.add_argument("--render", type=Path, help="print the table of this raw JSON file")
    parser.add_argument("--doc", type=Path, help="with --render: rewrite this doc's ranks.py block instead")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.render:
        blocks = render(json.loads(args.render.read_text()))
        if args.doc:
            render_into(args.doc, blocks, "ranks.py")
        else:
            print("\n\n".join(blocks.values()))
        return
    report = measure(args)
    print("\n\n".join(render(report).values()))
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
