"""The decoder benchmark stays runnable: a smoke run on a tiny Llama, then a resumed run that trains nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_sft import parity_rows, sum_rows, tiny_lm_folder

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
        "--methods", "zero-shot", "lora-r1", "taso-r1",
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
        ("boolq", "zero-shot"), ("boolq", "lora-r1"), ("boolq", "taso-r1"),
        ("arc-easy", "zero-shot"), ("arc-easy", "lora-r1"), ("arc-easy", "taso-r1"),
        ("gsm8k", "zero-shot"), ("gsm8k", "taso-r1"),
    ]  # fmt: skip
    by = {(r["task"], r["method"]): r for r in runs}
    assert by[("boolq", "taso-r1")]["trainable"]["total"] < by[("boolq", "lora-r1")]["trainable"]["total"]
    assert by[("gsm8k", "taso-r1")]["settings"]["max_train"] == 4 and "exact_match" in by[("gsm8k", "zero-shot")]
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| method |") and any(line.startswith("| taso-r1 |") for line in lines)

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(results.read_text().splitlines()) == len(runs)  # every run was already there
    assert table.read_text().splitlines() == lines
