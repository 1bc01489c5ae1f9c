"""A behaviour fingerprint of every method: eval logits after a short GLUE run, to compare two commits.

A refactor that claims "no change in behaviour" runs this before and after and compares the
JSON: equal numbers to the last digit, method by method. Each method is built by glue.py's own
``build`` (the report's settings, at a small calibration set and warm-up) and trained through
``taso.train.train``, so the fingerprint covers what the GLUE report runs.

    python benchmarks/fingerprint.py --out /tmp/after.json          # MRPC, 240 rows, 15 steps
    python benchmarks/fingerprint.py --warmup 0 --methods taso      # one method, no head warm-up
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import glue
import torch
from harness.tasks import glue_specs

from taso import data, pretrained
from taso.io import write_json
from taso.train import train

SETTINGS = {
    "taso": {"method": "taso", "lr": 1e-3, "p": 0.25, "rank": 4, "gamma": 0.5, "rule": "global", "calibration": 64},
    "random": {"method": "random", "lr": 1e-3, "p": 0.25, "rank": 4, "gamma": 0.5, "rule": "global", "calibration": 64},
    "lora-r1": {"method": "lora-r1", "lr": 1e-3},
    "head": {"method": "head", "lr": 1e-1},
    "full": {"method": "full", "lr": 1e-4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/glue"))
    parser.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--warmup", type=int, default=10, help="TASO's head warm-up steps before scoring")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(2)
    spec = glue_specs(args.data, max_train=None, max_eval=None)["mrpc"]
    tok = pretrained.load_tokenizer("minilm")
    train_rows, eval_rows = glue.split_rows(spec, "report")
    train_feats = data.encode(train_rows[:240], tok, 128)
    eval_feats = data.encode(eval_rows[:80], tok, 128)
    out = {}
    for name in args.methods:
        s = {**SETTINGS[name], **({"warmup": args.warmup} if "rank" in SETTINGS[name] else {})}
        model, method, _ = glue.build(s, spec, train_feats, tok, seed=0)
        cfg = glue.train_config(s, seed=0, max_steps=args.steps)
        train(model, train_feats, cfg, method=method, pad_id=tok.pad_token_id, progress=False)
        model.eval()
        with torch.no_grad():
            logits = torch.cat(
                [
                    model(**{k: v for k, v in b.items() if k != "labels"}).logits
                    for b in data.iterate(eval_feats, 16, tok.pad_token_id)
                ]
            )
        out[name] = {"abs_sum": logits.abs().sum().item(), "first": logits[:3].tolist()}
        print(name, json.dumps(out[name]), flush=True)
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
