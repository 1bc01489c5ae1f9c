"""Speed and memory of the masked-LoRA path and LoSiA-Pro against PEFT LoRA and the frozen-backbone floor.

Every timing is a ratio of two methods measured in one process on the same batches,
interleaved step by step (so drift and background load hit all methods alike); medians
over ``--steps`` steps after ``--warmup``. Peak RSS is measured in a fresh subprocess per
method, since a process's peak only grows.

    python benchmarks/speed.py                 # full run: real MiniLM, batch 16 x 128 tokens
    python benchmarks/speed.py --steps 3 --warmup 1 --no-rss   # smoke run
    python benchmarks/speed.py --decoder       # SmolLM2: loss over the answer window / over every position
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from taso import pretrained  # noqa: E402
from taso.config import LosiaConfig  # noqa: E402
from taso.importance import score_importance  # noqa: E402
from taso.masks import Mask, ModuleMask, derive_rows_cols  # noqa: E402
from taso.methods import MethodConfig  # noqa: E402
from taso.methods import build as build_method  # noqa: E402
from taso.targets import find_targets, layer_index  # noqa: E402

BATCH, TOKENS = 16, 128
DECODER_BATCH, PROMPT, ANSWER = 8, 60, 7  # BoolQ-shaped: a passage-and-question prompt, a short answer + EOS


def batches(n: int, seed: int = 0) -> list[dict]:
    """Fixed random batches of full length (no padding), so every method sees the same work."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1000, 30000, (BATCH, TOKENS), generator=g),
            "attention_mask": torch.ones(BATCH, TOKENS, dtype=torch.long),
            "labels": torch.randint(0, 2, (BATCH,), generator=g),
        }
        for _ in range(n)
    ]


def fresh_model():
    return pretrained.load_model("minilm", num_labels=2, seed=0)


def default_mask(model, data) -> Mask:
    return derive_rows_cols(score_importance(model, data[:2]), 0.25)


def top_half(mask: Mask, n_layers: int = 6) -> Mask:
    """The same mask with every module below the middle layer emptied."""
    keep = {
        n: m if (layer_index(n) or 0) >= n_layers // 2 else ModuleMask(m.rows[:0], m.cols[:0], m.shape)
        for n, m in mask.modules.items()
    }
    return Mask(keep, mask.meta)


def floor_model():
    """Head-only training, but with activation gradients forced through the whole encoder."""
    model = build_method("head", MethodConfig()).prepare(fresh_model())
    model.bert.embeddings.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    return model


R1 = MethodConfig(rank=1, alpha=2.0)  # the speed comparison is at rank 1, scale 2, for LoRA and TASO alike


def build(method: str, data):
    model = fresh_model()
    if method == "floor":
        return floor_model()
    if method == "peft_r1":
        return build_method("lora", R1).prepare(model)
    mask = default_mask(model, data)
    if method == "taso_top_half":
        mask = top_half(mask)
    return build_method("taso", R1).prepare(model, mask)


def train_step(model, opt, batch, autocast: bool = False) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def losia_stepper(in_slot: bool) -> Callable[[dict], None]:
    """A LoSiA-Pro step at the paper's p = 1/8: outside any importance slot (every layer computes
    only its block's gradient), or inside one (layer 0's matrices compute their full gradient and
    update the importance EMAs). The period outlasts the benchmark, so no block moves."""
    method = build_method("losia", MethodConfig(losia=LosiaConfig(period=10**6)))
    model = method.prepare(fresh_model())
    model.train()
    opt = method.optimizer(method.param_groups(model, 1e-4))
    method.scheduler(opt, 0, 10**6)  # every step is in layer 0's slot ...
    if not in_slot:
        for layer in method.layers().values():  # ... unless no layer records
            layer.record = False

    def step(batch):
        model(**batch).loss.backward()
        method.on_backward(model, 1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_stepper(method: str, data, autocast: bool = False) -> Callable[[dict], None]:
    if method.startswith("losia"):
        return losia_stepper(in_slot=method == "losia_slot")
    model = build(method, data)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return lambda batch: train_step(model, opt, batch, autocast)


def plain_weight_grads(model, targets) -> Callable[[dict], None]:
    """The reference for scoring: forward + backward with .grad on the target weights, then drop them."""
    model.eval()
    model.requires_grad_(False)
    weights = [m.weight for m in find_targets(model, targets).values()]
    for w in weights:
        w.requires_grad_(True)

    def step(batch):
        model(**batch).loss.backward()
        for w in weights:
            w.grad = None

    return step


def scoring_stepper(model, targets, autocast: bool = False) -> Callable[[dict], None]:
    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            score_importance(model, [batch], targets)

    return step


def interleaved(steppers: dict[str, Callable[[dict], None]], data, warmup: int, steps: int) -> dict[str, list[float]]:
    """Time one step of each method in turn, ``warmup + steps`` rounds, the order reversed every other
    round (so neither method always runs on a cache the other warmed); keep the last ``steps``."""
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for i in range(warmup + steps):
        batch = data[i % len(data)]
        for name, step in list(steppers.items())[:: -1 if i % 2 else 1]:
            start = time.perf_counter()
            step(batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), med, max(times)]
    return med, q[2] - q[0]


def peak_rss_mb(method: str, steps: int) -> float:
    """Peak RSS of a fresh process that builds ``method`` and runs ``steps`` of it."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", method, "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def rss_child(method: str, steps: int) -> None:
    data = batches(max(steps, 2))
    if method == "score":
        step = scoring_stepper(fresh_model(), "all-linear")
    elif method == "plain_backward":
        step = plain_weight_grads(fresh_model(), "all-linear")
    elif method.startswith("score_first_"):
        # Scoring a growing number of modules: peak memory should not grow with it.
        k = int(method.rsplit("_", 1)[1])
        model = fresh_model()
        names = list(find_targets(model))[:k]
        step = scoring_stepper(model, names)
    else:
        step = make_stepper(method, data)
    step(data[0])  # first step allocates optimizer state and caches; then measure from here
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the kernel's peak-RSS mark (VmHWM) to the current RSS
    for i in range(steps):
        step(data[i % len(data)])
    print(_vm_hwm_mb())


def _vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def startup_costs() -> dict[str, float]:
    """Wall time of the imports and the model load each stage pays, each in a fresh interpreter."""
    probes = {
        "python": "pass",
        "import torch": "import torch",
        "import transformers": "import transformers",
        "import mlflow": "import mlflow",
        "import pipeline.cli (taso --help)": "import pipeline.cli",
        "import stages.train (all its imports)": "import stages.train",
        "load MiniLM + tokenizer": "from taso import pretrained; pretrained.load_model('minilm'); pretrained.load_tokenizer('minilm')",
    }
    out = {}
    for name, code in probes.items():
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
        out[name] = statistics.median(runs)
    return out


def decoder_rows(warmup: int, steps: int) -> list[tuple[str, str, float, float, str]]:
    """SmolLM2 with a TASO r=1 mask: a training step whose loss runs the LM head over the answer
    window only (taso.causal_lm.answer_loss) against one that takes the model's own loss (logits at
    every position), on the same batches."""
    from taso import causal_lm

    tok = pretrained.load_tokenizer("smollm2")
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(4):
        ids = torch.randint(1000, tok.vocab_size - 1, (DECODER_BATCH, PROMPT + ANSWER), generator=g).tolist()
        feats = [{"input_ids": x, "attention_mask": [1] * len(x), "labels": [-100] * PROMPT + x[PROMPT:]} for x in ids]
        data.append(causal_lm.collate(feats, tok.pad_token_id))

    def stepper(loss_fn):
        model = pretrained.load_model("smollm2", "causal_lm")
        model = build_method("taso", R1).prepare(model, derive_rows_cols(score_importance(model, data[:1]), 0.25))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(batch):
            loss_fn(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    t = interleaved(
        {
            "window": stepper(causal_lm.answer_loss),
            "full": stepper(lambda model, batch: model(**batch, use_cache=False).loss),
        },
        data,
        warmup,
        steps,
    )
    w, f = summary(t["window"]), summary(t["full"])
    name = f"SmolLM2 step: answer-window / full logits ({DECODER_BATCH}x{PROMPT + ANSWER})"
    return [(name, "< 1", w[0] / f[0], w[0], f"IQR {w[1]:.3f}s"), ("SmolLM2 step: full logits", "", 1.0, f[0], "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up cost probes")
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--decoder", action="store_true", help="only the SmolLM2 answer-window comparison")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.steps)
        return
    torch.manual_seed(0)
    report: dict = {"threads": torch.get_num_threads(), "batch": [BATCH, TOKENS]}
    if args.decoder:
        report["batch"] = [DECODER_BATCH, PROMPT + ANSWER]
        rows = decoder_rows(args.warmup, args.steps)
    else:
        rows = encoder_rows(args, report)
    batch = " x ".join(map(str, report["batch"]))
    print(
        f"torch threads: {report['threads']}, batch {batch} tokens, median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"| {'figure':<52} | {'goal':<24} | {'ratio':>6} | {'median':>9} | spread |")
    print(f"|{'-' * 54}|{'-' * 26}|{'-' * 8}|{'-' * 11}|--------|")
    for name, goal, ratio, value, spread in rows:
        unit = "MB" if spread == "MB" else "s"
        print(
            f"| {name:<52} | {goal:<24} | {ratio:>6.3f} | {value:>7.3f} {unit:<1} | {spread if spread != 'MB' else ''} |"
        )
    if "startup_s" in report:
        print("\n| start-up (fresh interpreter, median of 3) | seconds |\n|---|---|")
        for name, sec in report["startup_s"].items():
            print(f"| {name} | {sec:.2f} |")
    report["rows"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def encoder_rows(args, report: dict) -> list[tuple[str, str, float, float, str]]:
    """MiniLM: TASO against PEFT LoRA and the floor, scoring against plain backward, bf16, peak RSS
    and start-up costs (the last two also go into ``report``)."""
    data = batches(4)
    rows: list[tuple[str, str, float, float, str]] = []

    methods = ("floor", "peft_r1", "taso", "taso_top_half", "losia", "losia_slot")
    t = interleaved({m: make_stepper(m, data) for m in methods}, data, args.warmup, args.steps)
    med = {m: summary(t[m]) for m in methods}
    report["train_step_s"] = {m: med[m][0] for m in methods}
    rows += [
        (
            "train step: TASO / PEFT LoRA r=1",
            "<= 1.00",
            med["taso"][0] / med["peft_r1"][0],
            med["taso"][0],
            f"IQR {med['taso'][1]:.3f}s",
        ),
        (
            "train step: TASO / floor (head only, full backward)",
            "<= 1.05",
            med["taso"][0] / med["floor"][0],
            med["floor"][0],
            f"IQR {med['floor'][1]:.3f}s",
        ),
        (
            "train step: TASO top-half mask / TASO",
            "< 1 (skip dead backward)",
            med["taso_top_half"][0] / med["taso"][0],
            med["taso_top_half"][0],
            f"IQR {med['taso_top_half'][1]:.3f}s",
        ),
        (
            "train step: LoSiA-Pro p 1/8 / PEFT LoRA r=1",
            "paper (GPU): ~0.73",
            med["losia"][0] / med["peft_r1"][0],
            med["losia"][0],
            f"IQR {med['losia'][1]:.3f}s",
        ),
        (
            "train step: LoSiA-Pro in a layer's slot / outside",
            "> 1 (full dW of 1 layer)",
            med["losia_slot"][0] / med["losia"][0],
            med["losia_slot"][0],
            f"IQR {med['losia_slot'][1]:.3f}s",
        ),
    ]

    score_model, plain_model = fresh_model(), fresh_model()
    t = interleaved(
        {"score": scoring_stepper(score_model, "all-linear"), "plain": plain_weight_grads(plain_model, "all-linear")},
        data,
        args.warmup,
        args.steps,
    )
    s, p = summary(t["score"]), summary(t["plain"])
    report["score_batch_s"] = {"score": s[0], "plain": p[0]}
    rows.append(("scoring batch / plain fwd+bwd with weight grads", "<= 1.10", s[0] / p[0], s[0], f"IQR {s[1]:.3f}s"))

    t = interleaved(
        {"fp32": make_stepper("taso", data), "bf16": make_stepper("taso", data, autocast=True)},
        data,
        args.warmup,
        args.steps,
    )
    f32, b16 = summary(t["fp32"]), summary(t["bf16"])
    rows.append(
        (
            "train step: bf16 autocast / fp32 (TASO)",
            "< 1 to be the default",
            b16[0] / f32[0],
            b16[0],
            f"IQR {b16[1]:.3f}s",
        )
    )
    t = interleaved(
        {
            "fp32": scoring_stepper(fresh_model(), "all-linear"),
            "bf16": scoring_stepper(fresh_model(), "all-linear", autocast=True),
        },
        data,
        args.warmup,
        args.steps,
    )
    f32, b16 = summary(t["fp32"]), summary(t["bf16"])
    rows.append(
        ("scoring batch: bf16 autocast / fp32", "< 1 to be the default", b16[0] / f32[0], b16[0], f"IQR {b16[1]:.3f}s")
    )

    if not args.no_rss:
        n = max(3, args.warmup)
        rss = {
            m: peak_rss_mb(m, n)
            for m in ("plain_backward", "score", "peft_r1", "taso", "losia", "score_first_6", "score_first_36")
        }
        report["peak_rss_mb"] = rss
        rows += [
            ("peak RSS: scoring / plain fwd+bwd", "<= 1.15", rss["score"] / rss["plain_backward"], rss["score"], "MB"),
            (
                "peak RSS: scoring 36 modules / 6 modules",
                "~1 (flat)",
                rss["score_first_36"] / rss["score_first_6"],
                rss["score_first_36"],
                "MB",
            ),
            ("peak RSS: TASO training / PEFT LoRA r=1", "<= 1.00", rss["taso"] / rss["peft_r1"], rss["taso"], "MB"),
            ("peak RSS: LoSiA-Pro training / PEFT LoRA r=1", "", rss["losia"] / rss["peft_r1"], rss["losia"], "MB"),
        ]
    if not args.no_startup:
        report["startup_s"] = startup_costs()
    return rows


if __name__ == "__main__":
    main()
