"""LoSiA-Pro on a GPU: its gradients against dense autograd on the device, then its step time and
peak memory against PEFT LoRA on a randomly initialised Llama (random weights cost what trained
ones do), every method interleaved step by step on the same batches.

    python benchmarks/losia_gpu.py --out docs/losia-gpu.json    # a CUDA machine: a few minutes
    python benchmarks/losia_gpu.py --render docs/losia-gpu.json --doc docs/performance.md   # the doc's table
    python benchmarks/losia_gpu.py --tiny                        # any machine (CPU without a GPU): a smoke run

The paper reports LoSiA-Pro about 27% faster per step than LoRA on GPU; this measures that claim
at this project's implementation (taso.block) on one model size, in bf16 weights.
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

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.docblocks import render_into  # noqa: E402

from taso.block import BlockLinear  # noqa: E402
from taso.config import LosiaConfig  # noqa: E402
from taso.methods import MethodConfig  # noqa: E402
from taso.methods import build as build_method  # noqa: E402

SIZES = {  # hidden, intermediate, layers, heads, batch, tokens
    "tiny": (64, 128, 2, 2, 2, 16),
    "default": (2048, 5632, 8, 16, 8, 512),  # a 1B-class block width, 8 of its layers
}


def gradient_check(device: str) -> dict:
    """LoSiA-Pro's block and input gradients against dense autograd's, on ``device`` in fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    base = torch.nn.Linear(768, 1024).to(device)
    rows = torch.randperm(1024, generator=g)[:128].sort().values
    cols = torch.randperm(768, generator=g)[:96].sort().values
    out = {}
    for record in (False, True):
        layer = BlockLinear(base, rows, cols)
        with torch.no_grad():
            layer.block.normal_()
        layer.record = record
        x = torch.randn(4, 128, 768, device=device, requires_grad=True)
        layer(x).square().sum().backward()
        w = layer.weight.detach().clone().requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        torch.nn.functional.linear(x2, w, base.bias).square().sum().backward()
        r, c = rows.to(device), cols.to(device)
        err = {
            "block": (layer.block.grad - w.grad[r][:, c]).abs().max().item() / w.grad.abs().max().item(),
            "input": (x.grad - x2.grad).abs().max().item() / x2.grad.abs().max().item(),
        }
        if record:
            err["full"] = (layer.full_grad - w.grad).abs().max().item() / w.grad.abs().max().item()
        out["in_slot" if record else "outside_slot"] = err
    torch.backends.cuda.matmul.allow_tf32 = True
    return out


def model(size: str, device: str, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, heads, _, _ = SIZES[size]
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype)


def stepper(name: str, size: str, device: str, dtype):
    """One training step of ``name`` (lora-r1, lora-r8, losia, losia-slot) as a closure over its model."""
    m = model(size, device, dtype)
    if name.startswith("lora"):
        rank = int(name.split("-r")[1])
        method = build_method("lora", MethodConfig(rank=rank, alpha=2.0 * rank))
        m = method.prepare(m)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        hook = None
    else:
        method = build_method("losia", MethodConfig(losia=LosiaConfig(period=10**6)))
        m = method.prepare(m)
        opt = method.optimizer(method.param_groups(m, 1e-4))
        method.scheduler(opt, 0, 10**6)  # every step is in layer 0's slot ...
        if name == "losia":
            for layer in method.layers().values():  # ... unless no layer records
                layer.record = False
        hook = method.on_backward
    m.train()
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)

    def step(batch):
        m(**batch).loss.backward()
        if hook:
            hook(m, 1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, trainable


def timing(size: str, device: str, steps: int, warmup: int) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    *_, batch, tokens = SIZES[size]
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(4):
        ids = torch.randint(100, 32000, (batch, tokens), generator=g).to(device)
        data.append({"input_ids": ids, "labels": ids})
    names = ("lora-r1", "lora-r8", "losia", "losia-slot")
    steppers, trainable, peak = {}, {}, {}
    for n in names:
        steppers[n], trainable[n] = stepper(n, size, device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for n in names:  # one step each first (optimizer state, kernels), then its peak above what is resident
        steppers[n](data[0])
        sync()
        if device == "cuda":
            resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            steppers[n](data[1])
            sync()
            peak[n] = (torch.cuda.max_memory_allocated() - resident) / 2**20
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warmup + steps):
        for n in names[:: -1 if i % 2 else 1]:
            sync()
            start = time.perf_counter()
            steppers[n](data[i % len(data)])
            sync()
            if i >= warmup:
                times[n].append(time.perf_counter() - start)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {
        "size": dict(zip(("hidden", "intermediate", "layers", "heads", "batch", "tokens"), SIZES[size], strict=True)),
        "dtype": str(dtype),
        "steps": steps,
        "median_step_s": med,
        "ratio_to_lora_r1": {n: med[n] / med["lora-r1"] for n in names},
        "ratio_to_lora_r8": {n: med[n] / med["lora-r8"] for n in names},
        "trainable": trainable,
        "step_peak_mib_above_resident": peak,
    }


NAMES = {
    "lora-r1": "PEFT LoRA r=1",
    "lora-r8": "PEFT LoRA r=8",
    "losia": "LoSiA-Pro p 1/8, no layer in its slot",
    "losia-slot": "LoSiA-Pro p 1/8, layer 0 in its slot",
}


def table(report: dict) -> str:
    """The doc's table from the raw figures."""
    lines = [
        "| method (trainable parameters) | step | × LoRA r=1 | × LoRA r=8 | step's peak GPU memory above resident |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, step in report["median_step_s"].items():
        r1, r8 = report["ratio_to_lora_r1"][name], report["ratio_to_lora_r8"][name]
        bold = "**" if name == "losia" else ""
        lines.append(
            f"| {NAMES.get(name, name)} ({report['trainable'][name]:,}) | {1e3 * step:.1f} ms | {bold}{r1:.2f}{bold} "
            f"| {bold}{r8:.2f}{bold} | {report['step_peak_mib_above_resident'][name]:,.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run on any machine")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    parser.add_argument("--render", type=Path, help="run nothing: the table of this raw JSON (into --doc if given)")
    parser.add_argument("--doc", type=Path, help="with --render: rewrite this doc's losia_gpu.py table")
    args = parser.parse_args()
    if args.render:
        text = table(json.loads(args.render.read_text()))
        render_into(args.doc, {"table": text}, "losia_gpu.py") if args.doc else print(text)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "gradient_check_max_rel_error": gradient_check(device),
        **timing("tiny" if args.tiny else "default", device, args.steps, args.warmup),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
