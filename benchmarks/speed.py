"""Speed and memory of the shipped TASO default and LoSiA-Pro against PEFT LoRA and the frozen-backbone floor.

The TASO row is the default that ships: rank, alpha, mask rule, p and the head's pooling are read
from ``--params`` (params.yaml), never copied here; the setting measured before the GLUE sweep
(rank 1, per-matrix rows x cols) is a second row. Every timing is a ratio of two methods measured
in one process on the same batches, interleaved step by step (so drift and background load hit
all methods alike); medians over ``--steps`` steps after ``--warmup``. Peak RSS is measured in a
fresh subprocess per method, since a process's peak only grows.

    python benchmarks/speed.py --steps 40 --json docs/speed.json      # MiniLM, about 8 minutes on 2 cores
    python benchmarks/speed.py --decoder --json docs/speed-decoder.json  # SmolLM2's answer-window loss
    python benchmarks/speed.py --render docs/speed.json docs/speed-decoder.json --doc docs/performance.md
    python benchmarks/speed.py --quick --json /tmp/s.json              # smoke run: 1 step, short batches

The raw JSON is what the doc's tables are rendered from (``--render``): the blocks between
``<!-- speed.py: NAME -->`` and ``<!-- end NAME -->`` in ``--doc`` are rewritten, nothing else
(benchmarks/harness/docblocks.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.docblocks import render_into, write_atomic  # noqa: E402

BATCH, TOKENS = 16, 128
DECODER_BATCH, PROMPT, ANSWER = 8, 60, 7  # BoolQ-shaped: a passage-and-question prompt, a short answer + EOS
# The setting docs/performance.md measured before the GLUE sweep chose today's default.
OLD = {"rank": 1, "alpha": 2.0, "rule": "rows_cols", "p": 0.25}


# ---------------------------------------------------------------------------- what is measured


def shipped(params_path: Path) -> dict:
    """The TASO setting params.yaml ships: what the train stage would build."""
    from pipeline.params import load_params

    params = load_params(params_path)
    return {
        "rank": params.train.rank,
        "alpha": params.train.alpha,
        "rule": params.mask.rule,
        "p": params.mask.p,
        "pooling": params.model.pooling,
        "targets": params.model.targets,
    }


def batches(n: int, tokens: int = TOKENS, seed: int = 0) -> list[dict]:
    """Fixed random batches of full length (no padding), so every method sees the same work."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1000, 30000, (BATCH, tokens), generator=g),
            "attention_mask": torch.ones(BATCH, tokens, dtype=torch.long),
            "labels": torch.randint(0, 2, (BATCH,), generator=g),
        }
        for _ in range(n)
    ]


class Bench:
    """Builds every method on the same base model, head and batches."""

    def __init__(self, setting: dict, data: list[dict]):
        self.setting, self.data = setting, data
        self._importance = None

    def model(self):
        from taso import pretrained

        return pretrained.load_model("minilm", num_labels=2, seed=0, pooling=self.setting["pooling"])

    def mask(self, rule: str, p: float):
        from taso.importance import score_importance
        from taso.masks.rules import derive_mask

        if self._importance is None:
            self._importance = score_importance(self.model(), self.data[:2], self.setting["targets"])
        return derive_mask(self._importance, rule, p)

    def taso(self, s: dict, top_half: bool = False):
        from taso.methods import MethodConfig
        from taso.methods import build as build_method

        mask = self.mask(s["rule"], s["p"])
        if top_half:
            mask = _top_half(mask)
        config = MethodConfig(rank=s["rank"], alpha=s["alpha"], targets=self.setting["targets"])
        return build_method("taso", config).prepare(self.model(), mask)

    def build(self, method: str):
        from taso.methods import MethodConfig
        from taso.methods import build as build_method

        if method == "floor":  # head-only training, with activation gradients forced through the whole encoder
            model = build_method("head", MethodConfig()).prepare(self.model())
            model.bert.embeddings.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
            return model
        if method == "peft_r1":
            return build_method("lora", MethodConfig(rank=1, alpha=2.0, targets=self.setting["targets"])).prepare(
                self.model()
            )
        if method == "taso_rank1":  # the default's mask and update scale at rank 1: what rank 4 itself costs
            return self.taso(self.setting | {"rank": 1, "alpha": self.setting["alpha"] / self.setting["rank"]})
        return self.taso(OLD if method == "taso_old" else self.setting, top_half=method == "taso_top_half")

    def stepper(self, method: str, autocast: bool = False) -> Callable[[dict], None]:
        import torch

        if method.startswith("losia"):
            return self.losia(in_slot=method == "losia_slot")
        if method == "taso_no_factor_grads":
            return _without_factor_gradients(self.stepper("taso"))
        model = self.build(method)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return lambda batch: train_step(model, opt, batch, autocast)

    def losia(self, in_slot: bool) -> Callable[[dict], None]:
        """A LoSiA-Pro step at the paper's p = 1/8: outside any importance slot (every layer computes
        only its block's gradient), or inside one (layer 0's matrices compute their full gradient and
        update the importance EMAs). The period outlasts the benchmark, so no block moves."""
        from taso.config import LosiaConfig
        from taso.methods import MethodConfig
        from taso.methods import build as build_method

        method = build_method("losia", MethodConfig(losia=LosiaConfig(period=10**6)))
        model = method.prepare(self.model())
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

    def plain_weight_grads(self) -> Callable[[dict], None]:
        """The reference for scoring: forward + backward with .grad on the target weights, then drop them."""
        from taso.targets import find_targets

        model = self.model()
        model.eval()
        model.requires_grad_(False)
        weights = [m.weight for m in find_targets(model, self.setting["targets"]).values()]
        for w in weights:
            w.requires_grad_(True)

        def step(batch):
            model(**batch).loss.backward()
            for w in weights:
                w.grad = None

        return step

    def scoring(self, targets=None, autocast: bool = False) -> Callable[[dict], None]:
        import torch

        from taso.importance import score_importance

        model = self.model()
        targets = targets if targets is not None else self.setting["targets"]

        def step(batch):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                score_importance(model, [batch], targets)

        return step


def _without_factor_gradients(step: Callable[[dict], None]) -> Callable[[dict], None]:
    """The TASO step with the masked layers' factor gradients left out (zeros): the same merged-weight
    forward and input gradient in the same autograd node, so the step's cost above the floor splits
    into what the node costs without them and what the factor gradients cost."""
    import torch

    import taso.layer

    fused = taso.layer._MaskedLora

    class NoFactorGradients(fused):
        @staticmethod
        def backward(ctx, grad_y):
            _x, _w, A, B, *_ = ctx.saved_tensors
            grad_x = taso.layer.input_gradient(ctx, grad_y)
            return grad_x, None, None, torch.zeros_like(A), torch.zeros_like(B), None, None, None, None

    def patched(batch):
        taso.layer._MaskedLora = NoFactorGradients
        try:
            step(batch)
        finally:
            taso.layer._MaskedLora = fused

    return patched


def _top_half(mask, n_layers: int = 6):
    """The same mask with every module below the middle layer emptied."""
    from taso.masks import Mask, ModuleMask
    from taso.targets import layer_index

    keep = {
        n: m if (layer_index(n) or 0) >= n_layers // 2 else ModuleMask(m.rows[:0], m.cols[:0], m.shape)
        for n, m in mask.modules.items()
    }
    return Mask(keep, mask.meta)


def train_step(model, opt, batch, autocast: bool = False) -> None:
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def interleaved(steppers: dict[str, Callable[[dict], None]], data, warmup: int, steps: int) -> dict[str, dict]:
    """Time one step of each method in turn, ``warmup + steps`` rounds, the order reversed every other
    round (so neither method always runs on a cache the other warmed); the median and IQR of the
    last ``steps``."""
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for i in range(warmup + steps):
        batch = data[i % len(data)]
        for name, step in list(steppers.items())[:: -1 if i % 2 else 1]:
            start = time.perf_counter()
            step(batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: summary(v) for k, v in times.items()}


def summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), 0, max(times)]
    return {"median": statistics.median(times), "iqr": q[2] - q[0], "n": len(times)}


def trainable(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora" in n)


# ---------------------------------------------------------------------------- the runs


def encoder(args, setting: dict) -> dict:
    """MiniLM: the training steps, scoring, bf16, peak RSS, a per-module profile and start-up costs."""
    import torch

    data = batches(4, args.tokens)
    bench = Bench(setting, data)
    report: dict = {"part": "encoder", "setting": setting, "old_setting": OLD}
    report["adapter_params"] = {m: trainable(bench.build(m)) for m in ("taso", "taso_old", "peft_r1")}
    methods = (
        "floor",
        "peft_r1",
        "taso",
        "taso_no_factor_grads",
        "taso_rank1",
        "taso_old",
        "taso_top_half",
        "losia",
        "losia_slot",
    )
    report["train_step_s"] = interleaved({m: bench.stepper(m) for m in methods}, data, args.warmup, args.steps)
    report["score_batch_s"] = interleaved(
        {"score": bench.scoring(), "plain": bench.plain_weight_grads()}, data, args.warmup, args.steps
    )
    report["bf16_train_step_s"] = interleaved(
        {"fp32": bench.stepper("taso"), "bf16": bench.stepper("taso", autocast=True)}, data, args.warmup, args.steps
    )
    report["bf16_score_batch_s"] = interleaved(
        {"fp32": bench.scoring(), "bf16": bench.scoring(autocast=True)}, data, args.warmup, args.steps
    )
    if not args.no_profile:
        report["module_profile"] = module_profile(bench, setting, rounds=max(5, 3 * args.steps))
        report["routes"] = routes(bench, setting)
        report["route_crossover"] = route_crossover(setting["rank"], BATCH * args.tokens, rounds=max(5, args.steps))
    if not args.no_rss:
        n = max(3, args.warmup)
        rss = ("plain_backward", "score", "peft_r1", "taso", "taso_old", "losia", "score_first_6", "score_first_36")
        report["peak_rss_mb"] = {m: peak_rss_mb(m, n, args) for m in rss}
    if not args.no_startup:
        report["startup_s"] = startup_costs()
    report["threads"] = torch.get_num_threads()
    return report


def module_profile(bench: Bench, setting: dict, rounds: int) -> list[dict]:
    """Forward + backward of one target layer of each shape, alone, on the benchmark's activations
    (batch × tokens rows): the frozen layer (input gradient only) against the masked LoRA layer at
    the default's rank by each route to the factor gradients (the kept block's weight gradient, or
    rank-r passes over the activations), on the default mask's own rows and columns of that layer.
    Interleaved like the steps; the ratio is to the frozen layer."""
    import torch

    from taso.layer import MaskedLoraLinear, block_gradient_pays
    from taso.targets import find_targets

    model, mask = bench.model(), bench.mask(setting["rule"], setting["p"])
    layers = find_targets(model, setting["targets"])
    picked: dict[tuple, str] = {}
    for name, layer in layers.items():  # the first layer of each shape that the mask adapts
        if not mask.modules[name].empty:
            picked.setdefault(tuple(layer.weight.shape), name)
    n = BATCH * bench.data[0]["input_ids"].shape[1]
    g = torch.Generator().manual_seed(0)
    r = setting["rank"]
    out = []
    for shape, name in picked.items():
        base, m = layers[name].requires_grad_(False), mask.modules[name]  # frozen, as the methods run it
        x = torch.randn(n, shape[1], generator=g, requires_grad=True)
        grad = torch.randn(n, shape[0], generator=g)
        layer = MaskedLoraLinear(base, m.rows, m.cols, r=r, alpha=setting["alpha"])
        torch.nn.init.normal_(layer.lora_B, generator=g)
        steps = {"frozen": lambda _batch, base=base, x=x, grad=grad: base(x).backward(grad)}
        steps |= {f"rank {r}, {route}": step for route, step in _route_steps(layer, x, grad).items()}
        t = interleaved(steps, [None], 3, rounds)
        route = "block route" if block_gradient_pays(shape, len(m.rows), len(m.cols), r) else "rank passes"
        out.append(
            {"module": name, "shape": list(shape), "rows": len(m.rows), "cols": len(m.cols), "route": route, "s": t}
        )
    return out


def _route_steps(layer, x, grad) -> dict[str, Callable[[dict], None]]:
    """Forward + backward of a masked LoRA layer by each route to its factor gradients."""
    from taso.layer import _MaskedLora

    def step(_batch, block: bool) -> None:
        w = layer.base
        y = _MaskedLora.apply(
            x, w.weight, w.bias, layer.lora_A, layer.lora_B, layer.rows, layer.cols, layer.scaling, block
        )
        y.backward(grad)
        layer.lora_A.grad = layer.lora_B.grad = x.grad = None

    return {"block route": lambda b: step(b, True), "rank passes": lambda b: step(b, False)}


# Block widths swept for the route crossover, as multiples of the rank passes' width r·(d_in + d_out).
CROSSOVER_MULTIPLES = (2, 4, 6, 8, 12, 16, 24)


def route_crossover(rank: int, rows: int, rounds: int) -> dict:
    """The sweep behind ``taso.layer.BLOCK_GRADIENT_LIMIT``: for each layer shape of MiniLM, kept
    blocks of growing size (``CROSSOVER_MULTIPLES`` times the rank passes' width, rows and columns
    in the layer's own proportion), the block route's time over the rank passes' (below 1: the
    block route is cheaper), on ``rows`` random activation rows."""
    import torch

    from taso.layer import BLOCK_GRADIENT_LIMIT, MaskedLoraLinear

    g = torch.Generator().manual_seed(0)
    out = []
    for d_out, d_in in ((384, 384), (1536, 384), (384, 1536)):
        base = torch.nn.Linear(d_in, d_out).requires_grad_(False)
        x = torch.randn(rows, d_in, generator=g, requires_grad=True)
        grad = torch.randn(rows, d_out, generator=g)
        ratios = {}
        for k in CROSSOVER_MULTIPLES:
            area = k * rank * (d_in + d_out)
            n_rows = min(d_out, round((area * d_out / d_in) ** 0.5))
            n_cols = min(d_in, round(area / n_rows))
            pick = lambda n, d: torch.randperm(d, generator=g)[:n].sort().values  # noqa: E731
            layer = MaskedLoraLinear(base, pick(n_rows, d_out), pick(n_cols, d_in), r=rank, alpha=2.0 * rank)
            torch.nn.init.normal_(layer.lora_B, generator=g)
            t = interleaved(_route_steps(layer, x, grad), [None], 3, rounds)
            ratios[str(k)] = t["block route"]["median"] / t["rank passes"]["median"]
        out.append({"shape": [d_out, d_in], "ratios": ratios})
    return {"rank": rank, "rows": rows, "limit": BLOCK_GRADIENT_LIMIT, "block_over_rank": out}


def routes(bench: Bench, setting: dict) -> dict[str, int]:
    """How many adapted layers of the default mask take each route to their factor gradients."""
    from taso.layer import block_gradient_pays

    mask, r = bench.mask(setting["rule"], setting["p"]), setting["rank"]
    picks = [block_gradient_pays(m.shape, len(m.rows), len(m.cols), r) for m in mask.modules.values() if not m.empty]
    return {"block route": picks.count(True), "rank passes": picks.count(False)}


def peak_rss_mb(method: str, steps: int, args) -> float:
    """Peak RSS of a fresh process that builds ``method`` and runs ``steps`` of it."""
    cmd = [sys.executable, __file__, "--rss-child", method, "--steps", str(steps), "--params", str(args.params)]
    out = subprocess.run([*cmd, "--tokens", str(args.tokens)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def rss_child(args) -> None:
    setting = shipped(args.params)
    data = batches(max(args.steps, 2), args.tokens)
    bench = Bench(setting, data)
    method = args.rss_child
    if method == "score":
        step = bench.scoring()
    elif method == "plain_backward":
        step = bench.plain_weight_grads()
    elif method.startswith("score_first_"):  # scoring a growing number of modules: peak memory should stay flat
        from taso.targets import find_targets

        names = list(find_targets(bench.model(), setting["targets"]))[: int(method.rsplit("_", 1)[1])]
        step = bench.scoring(names)
    else:
        step = bench.stepper(method)
    step(data[0])  # first step allocates optimizer state and caches; then measure from here
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the kernel's peak-RSS mark (VmHWM) to the current RSS
    for i in range(args.steps):
        step(data[i % len(data)])
    print(_vm_hwm_mb())


def _vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def startup_costs(runs: int = 3) -> dict[str, float]:
    """Wall time of the imports and the model load each stage pays, each in a fresh interpreter (median of ``runs``)."""
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
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def decoder(args) -> dict:
    """SmolLM2 with a TASO r=1 mask: a training step whose loss runs the LM head over the answer
    window only (taso.causal_lm.answer_loss) against one that takes the model's own loss (logits at
    every position), on the same batches."""
    import torch

    from taso import causal_lm, pretrained
    from taso.importance import score_importance
    from taso.masks.rules import derive_rows_cols
    from taso.methods import MethodConfig
    from taso.methods import build as build_method

    tok = pretrained.load_tokenizer("smollm2")
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(4):
        ids = torch.randint(1000, tok.vocab_size - 1, (DECODER_BATCH, PROMPT + ANSWER), generator=g).tolist()
        feats = [{"input_ids": x, "attention_mask": [1] * len(x), "labels": [-100] * PROMPT + x[PROMPT:]} for x in ids]
        data.append(causal_lm.collate(feats, tok.pad_token_id))

    def stepper(loss_fn):
        model = pretrained.load_model("smollm2", "causal_lm")
        mask = derive_rows_cols(score_importance(model, data[:1]), 0.25)
        model = build_method("taso", MethodConfig(rank=1, alpha=2.0)).prepare(model, mask)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(batch):
            loss_fn(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    steps = {
        "window": stepper(causal_lm.answer_loss),
        "full": stepper(lambda model, batch: model(**batch, use_cache=False).loss),
    }
    return {
        "part": "decoder",
        "batch": [DECODER_BATCH, PROMPT + ANSWER],
        "train_step_s": interleaved(steps, data, args.warmup, args.steps),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------- the doc's tables


def _ratio_row(figure: str, goal: str, num: dict, den: dict, shown: dict | None = None) -> str:
    shown = shown or num
    return (
        f"| {figure} | {goal} | **{num['median'] / den['median']:.3f}** | {shown['median']:.3f} s | "
        f"IQR {shown['iqr']:.3f} s |"
    )


def _setting(s: dict) -> str:
    return f"rank {s['rank']}, alpha {s['alpha']:g}, {s['rule']} rule, p {s['p']:g}"


def render(report: dict) -> dict[str, str]:
    """The doc's tables, by block name, from one raw report."""
    if report["part"] == "decoder":
        t = report["train_step_s"]
        b, n = report["batch"], t["window"]["n"]
        return {
            "decoder": "\n".join(
                [
                    f"SmolLM2 TASO r=1 p 0.25, batch {b[0]} × {b[1]} tokens, median of {n} interleaved steps.",
                    "",
                    "| figure | goal | ratio | median | spread |",
                    "|---|---|---|---|---|",
                    _ratio_row("SmolLM2 step: answer window / full logits", "< 1", t["window"], t["full"]),
                    f"| SmolLM2 step: full logits | | 1.000 | {t['full']['median']:.3f} s | IQR {t['full']['iqr']:.3f} s |",
                ]
            )
        }
    s, old, params = report["setting"], report["old_setting"], report["adapter_params"]
    t, n = report["train_step_s"], report["train_step_s"]["taso"]["n"]
    lines = [
        f"Shipped default (params.yaml): TASO {_setting(s)}, pooling {s['pooling']}: {params['taso']:,} adapter "
        f"parameters (PEFT LoRA r=1: {params['peft_r1']:,}). Old setting: {_setting(old)}, "
        f"{params['taso_old']:,}. Batch {BATCH} × {report.get('tokens', TOKENS)} tokens, {report['threads']} threads, "
        f"median of {n} interleaved steps.",
        "",
        "| figure | goal | ratio | median | spread |",
        "|---|---|---|---|---|",
        _ratio_row("train step: TASO default / PEFT LoRA r=1", "≤ 1.00", t["taso"], t["peft_r1"]),
        _ratio_row("train step: TASO default / floor (head only, full backward)", "≤ 1.05", t["taso"], t["floor"]),
        _ratio_row(
            "train step: TASO default, factor gradients left out / floor", "", t["taso_no_factor_grads"], t["floor"]
        ),
        _ratio_row("train step: TASO default at rank 1 / floor", "", t["taso_rank1"], t["floor"]),
        _ratio_row("train step: TASO old setting / PEFT LoRA r=1", "≤ 1.00", t["taso_old"], t["peft_r1"]),
        _ratio_row("train step: TASO old setting / floor", "≤ 1.05", t["taso_old"], t["floor"]),
        _ratio_row("train step: TASO default, top-half mask / all layers", "< 1", t["taso_top_half"], t["taso"]),
        _ratio_row("train step: LoSiA-Pro p 1/8 / PEFT LoRA r=1", "paper (GPU): ~0.73", t["losia"], t["peft_r1"]),
        _ratio_row("train step: LoSiA-Pro in a layer's slot / outside", "> 1", t["losia_slot"], t["losia"]),
        _ratio_row(
            "scoring batch / plain fwd+bwd with weight grads",
            "≤ 1.10",
            report["score_batch_s"]["score"],
            report["score_batch_s"]["plain"],
        ),
        _ratio_row(
            "train step: bf16 autocast / fp32 (TASO default)",
            "< 1 to be the default",
            report["bf16_train_step_s"]["bf16"],
            report["bf16_train_step_s"]["fp32"],
        ),
        _ratio_row(
            "scoring batch: bf16 autocast / fp32",
            "< 1 to be the default",
            report["bf16_score_batch_s"]["bf16"],
            report["bf16_score_batch_s"]["fp32"],
        ),
    ]
    if rss := report.get("peak_rss_mb"):
        for figure, goal, a, b in (
            ("peak RSS: scoring / plain fwd+bwd", "≤ 1.15", "score", "plain_backward"),
            ("peak RSS: scoring 36 modules / 6 modules", "~1 (flat)", "score_first_36", "score_first_6"),
            ("peak RSS: TASO default training / PEFT LoRA r=1", "≤ 1.00", "taso", "peft_r1"),
            ("peak RSS: TASO old setting / PEFT LoRA r=1", "≤ 1.00", "taso_old", "peft_r1"),
            ("peak RSS: LoSiA-Pro training / PEFT LoRA r=1", "", "losia", "peft_r1"),
        ):
            lines.append(f"| {figure} | {goal} | **{rss[a] / rss[b]:.3f}** | {rss[a]:,.0f} MB | |")
    blocks = {"encoder": "\n".join(lines)}
    if prof := report.get("module_profile"):
        columns = [k for k in prof[0]["s"] if k != "frozen"]
        rows = [
            "| layer (shape, kept rows × cols) | frozen: fwd + input grad | "
            + " | ".join(columns)
            + " | the layer takes |",
            "|---|---:|" + "---:|" * len(columns) + "---|",
        ]
        for p in prof:
            fr = p["s"]["frozen"]["median"]
            cells = " | ".join(f"{p['s'][k]['median'] / fr:.3f}×" for k in columns)
            rows.append(
                f"| {p['module']} ({p['shape'][0]}×{p['shape'][1]}, {p['rows']} × {p['cols']}) "
                f"| {1e3 * fr:.2f} ms | {cells} | {p['route']} |"
            )
        routes = report["routes"]
        rows += [
            "",
            f"Routes over all {sum(routes.values())} adapted layers of the default rule's mask on these batches: "
            + ", ".join(f"{k} {v}" for k, v in routes.items())
            + ".",
        ]
        blocks["profile"] = "\n".join(rows)
    if cross := report.get("route_crossover"):
        widths = list(cross["block_over_rank"][0]["ratios"])
        rows = [
            f"Rank {cross['rank']}, {cross['rows']:,} activation rows; the layer's limit (`BLOCK_GRADIENT_LIMIT`) was {cross['limit']}×.",
            "",
            "| layer shape | " + " | ".join(f"{k}×" for k in widths) + " |",
            "|---|" + "---:|" * len(widths),
        ]
        for c in cross["block_over_rank"]:
            cells = " | ".join(f"{v:.2f}" for v in c["ratios"].values())
            rows.append(f"| {c['shape'][0]}×{c['shape'][1]} | {cells} |")
        blocks["crossover"] = "\n".join(rows)
    if start := report.get("startup_s"):
        blocks["startup"] = "\n".join(
            ["| what | seconds |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in start.items())]
        )
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the shipped default is read here")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens per example")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up cost probes")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-layer profile")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 step, 16 tokens, no RSS, start-up or profile"
    )
    parser.add_argument("--decoder", action="store_true", help="only the SmolLM2 answer-window comparison")
    parser.add_argument("--json", type=Path, help="write the raw figures here (what --render reads)")
    parser.add_argument("--render", type=Path, nargs="+", help="print the tables of these raw JSON files")
    parser.add_argument("--doc", type=Path, help="with --render: rewrite this doc's speed.py blocks instead")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        reports = [json.loads(p.read_text()) for p in args.render]
        if args.doc:
            render_into(args.doc, {name: text for r in reports for name, text in render(r).items()}, "speed.py")
        else:
            for r in reports:
                print("\n\n".join(render(r).values()))
        return
    if args.quick:
        args.steps, args.warmup, args.tokens = 1, 0, 16
        args.no_rss = args.no_startup = args.no_profile = True
    if args.rss_child:
        rss_child(args)
        return
    import torch

    torch.manual_seed(0)
    report = decoder(args) if args.decoder else encoder(args, shipped(args.params))
    report |= {
        "command": " ".join(["python benchmarks/speed.py", *sys.argv[1:]]),
        "tokens": args.tokens,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    print("\n\n".join(render(report).values()))
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
