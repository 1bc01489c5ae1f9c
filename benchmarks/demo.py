"""The README's demo figures, printed by a command: a fresh clone's `make run`, its metrics, a no-op
`dvc repro`, and the method comparison of README "Methods" as `dvc exp run` experiments.

    python benchmarks/demo.py --json docs/demo.json                    # about an hour on 2 cores
    python benchmarks/demo.py --render docs/demo.json --doc README.md  # README's tables from it

It clones the repository's committed HEAD (uncommitted changes are not measured) into
``--workdir`` and runs exactly what README tells a new user to run there. Each phase is written
to ``--json`` as it finishes; rerun with the same ``--workdir`` and ``--json`` and it goes on at
the first phase not recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.docblocks import render_into, write_atomic

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sentiment", "entailment", "topic")
# README "Methods": the other methods at TASO's parameter count or their own default.
EXPERIMENTS = {
    "method-lora": ["-S", "train.method=lora"],
    "method-lora-r1": ["-S", "train.method=lora", "-S", "train.rank=1", "-S", "train.alpha=2"],
    "method-random": ["-S", "train.method=random"],
    "method-head": ["-S", "train.method=head"],
    "losia": ["-S", "train.method=losia"],
    "pooling-architecture": ["-S", "model.pooling=architecture"],  # BERT's pooler head, the default before
}


def sh(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Run ``cmd`` with the project's venv first on PATH; its wall time and stdout. A failure stops the script."""
    env = os.environ | {"PATH": f"{cwd / '.venv' / 'bin'}:{os.environ['PATH']}"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"demo.py: {' '.join(cmd)} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def figures(clone: Path) -> dict:
    """Each task's metrics and adapter counts as the pipeline wrote them."""
    out = {}
    for task in TASKS:
        art = clone / "artifacts" / task
        metrics, train = json.loads((art / "metrics.json").read_text()), json.loads((art / "train.json").read_text())
        out[task] = {
            "metrics": metrics,
            "trainable_adapter": train.get("trainable_adapter"),
            "trainable_head": train.get("trainable_head"),
        }
    return out


def named(node, name: str):
    """Every dict in ``dvc exp show --json`` output whose ``name`` is ``name``."""
    if isinstance(node, dict):
        if node.get("name") == name and "data" in node:
            yield node
        for value in node.values():
            yield from named(value, name)
    elif isinstance(node, list):
        for item in node:
            yield from named(item, name)


def experiments(clone: Path) -> dict:
    """Every experiment's per-task metrics, from `dvc exp show --json`."""
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], clone)[1])
    out = {}
    for name in EXPERIMENTS:
        for exp in named(shown, name):
            files = exp["data"].get("metrics") or {}
            out[name] = {task: files.get(f"artifacts/{task}/metrics.json", {}).get("data", {}) for task in TASKS}
    return out


def run(args) -> None:
    report = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    clone = args.workdir / "taso"

    def save(key: str, value) -> None:
        report[key] = value
        print(f"demo.py: {key}: {json.dumps(value)[:300]}", file=sys.stderr, flush=True)
        if args.json:
            write_atomic(args.json, json.dumps(report, indent=2) + "\n")

    if "commit" not in report:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        save(
            "commit",
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip(),
        )
    if "setup_s" not in report:
        save("setup_s", sh(["make", "setup"], clone)[0])
    if "repro_s" not in report:
        seconds, out = sh(["make", "run"], clone)  # setup is done: this is `dvc repro` + `dvc metrics show`
        save("repro_s", seconds)
        save("stages_run", out.count("Running stage"))
        save("tasks", figures(clone))
    if "noop_repro_s" not in report:
        save("noop_repro_s", [sh(["dvc", "repro"], clone)[0] for _ in range(9)])
    left = [name for name in EXPERIMENTS if name not in report.get("experiments", {})] if args.experiments else []
    if left and sh(["git", "log", "-1", "--format=%s"], clone)[1].strip() != "make run":
        sh(["git", "add", "-A"], clone)  # README: commit the run, so experiments compare against it
        sh(["git", "-c", "user.name=demo", "-c", "user.email=demo@localhost", "commit", "-qm", "make run"], clone)
    for name in left:
        # An experiment leaves its params in the workspace; each of these starts from the committed ones.
        sh(["git", "checkout", "--", "params.yaml"], clone)
        sh(["dvc", "exp", "run", "-n", name, *EXPERIMENTS[name]], clone)
        save("experiments", report.get("experiments", {}) | {name: experiments(clone)[name]})
    save("machine", {"cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")})


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render(report: dict) -> dict[str, str]:
    """README's blocks from the raw report."""
    t = report["tasks"]
    rows = [
        "| task | eval examples | majority class | accuracy | F1 | adapter parameters (+ head) |",
        "|---|---|---|---|---|---|",
    ]
    for task, f in t.items():
        m = f["metrics"]
        f1 = "–" if "f1" not in m else f"{100 * m['f1']:.1f}"
        rows.append(
            f"| {task} | {m['n_examples']} | {_pct(m.get('majority_accuracy'))} | {_pct(m['accuracy'])} | {f1} "
            f"| {f['trainable_adapter']:,} (+{f['trainable_head']:,}) |"
        )
    setup, repro, noop = report["setup_s"], report["repro_s"], report["noop_repro_s"]
    blocks = {
        "tasks": "\n".join(rows),
        "timing": (
            f"On this machine's 2 cores (commit {report['commit'][:7]}, {report['machine']['date']}): `make setup` "
            f"{setup // 60:.0f} min {setup % 60:.0f} s, then `dvc repro` of the default {repro // 60:.0f} min "
            f"{repro % 60:.0f} s ({report['stages_run']} stages, one process each); a no-op `dvc repro` after it median {statistics.median(noop):.1f} s over "
            f"{len(noop)} runs (range {min(noop):.1f}–{max(noop):.1f} s)."
        ),
    }
    if exps := report.get("experiments"):
        rows = [
            "| run | " + " | ".join(f"{task} accuracy" for task in TASKS) + " | entailment F1 |",
            "|---|---:|---:|---:|---:|",
        ]
        main = {task: f["metrics"] for task, f in t.items()}
        for name, metrics in {"main (TASO default)": main, **exps}.items():
            cells = " | ".join(_pct(metrics[task].get("accuracy")) for task in TASKS)
            f1 = metrics["entailment"].get("f1")
            rows.append(f"| {name} | {cells} | {'–' if f1 is None else f'{100 * f1:.1f}'} |")
        majority = " | ".join(_pct(main[task].get("majority_accuracy")) for task in TASKS)
        rows.append(f"| majority class (reference) | {majority} | – |")
        blocks["methods"] = "\n".join(rows)
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the clone goes (default: a new temporary folder)")
    parser.add_argument("--json", type=Path, help="write the raw figures here, phase by phase")
    parser.add_argument("--no-experiments", dest="experiments", action="store_false", help="skip the method comparison")
    parser.add_argument("--render", type=Path, help="run nothing: README's blocks from this raw JSON")
    parser.add_argument("--doc", type=Path, help="with --render: rewrite this doc's demo.py blocks")
    args = parser.parse_args()
    if args.render:
        blocks = render(json.loads(args.render.read_text()))
        render_into(args.doc, blocks, "demo.py") if args.doc else print("\n\n".join(blocks.values()))
        return
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="taso-demo-"))
    run(args)


if __name__ == "__main__":
    main()
