"""Run by tests/test_distributed.py under ``torchrun --nproc-per-node 2`` (and in-process as the
single-process reference): importance, a mask, training steps and an IMP search on a tiny BERT; rank 0
writes what it computed to the safetensors file named by the first argument. A second argument
makes a rank fail on purpose (its number) or scores with the sensitivity statistic (``sensitivity``)."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import build_batches, build_features, build_model  # noqa: E402

from taso import distributed  # noqa: E402
from taso.config import ImpConfig, LosiaConfig  # noqa: E402
from taso.imp import round_trainer, search  # noqa: E402
from taso.importance import score_importance  # noqa: E402
from taso.masks import derive_mask  # noqa: E402
from taso.methods import MethodConfig, build  # noqa: E402
from taso.targets import find_targets  # noqa: E402
from taso.train import TrainConfig, train  # noqa: E402

BATCH = 8  # the global batch: each of 2 ranks takes 4 of it (the last batch, 7 examples, splits 4 + 3)


def compute(fail_rank: int | None = None) -> dict:
    imp = score_importance(build_model("bert"), build_batches("bert", n_batches=5, batch_size=4))
    mask = derive_mask(imp, "global", 0.5)
    method = build("taso", MethodConfig(rank=2, alpha=4.0, seed=0))
    model = method.prepare(build_model("bert"), mask)
    if distributed.rank() == fail_rank:
        raise RuntimeError(f"rank {fail_rank} failed on purpose")
    cfg = TrainConfig(lr=1e-2, batch_size=BATCH, max_steps=3, seed=0, warmup_ratio=0.0)
    train(model, build_features("bert", 23), cfg, method=method, progress=False)
    out = {f"imp.{n}.rows": t for n, t in imp.rows.items()} | {f"imp.{n}.cols": t for n, t in imp.cols.items()}
    out |= {f"mask.{n}.rows": m.rows for n, m in mask.modules.items()}
    out |= {f"mask.{n}.cols": m.cols for n, m in mask.modules.items()}
    out |= {f"trained.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}
    # LoSiA, whose importance EMAs read the full gradient in a layer's slot: its blocks must move
    # to the same rows and columns on every rank (period 1 on 2 layers: 2 moves in 4 steps).
    losia = build("losia", MethodConfig(seed=0, losia=LosiaConfig(p=0.5, period=1)))
    blocks = losia.prepare(build_model("bert"))
    train(blocks, build_features("bert", 23), dataclasses.replace(cfg, max_steps=4), method=losia, progress=False)
    assert losia.history(), "no block moved: the comparison would not test the relocalization"
    out |= {f"losia.{n}.rows": m.rows for n, m in losia.mask().modules.items()}
    out |= {f"losia.{n}.cols": m.cols for n, m in losia.mask().modules.items()}
    out |= {f"losia.{n}.delta": layer.delta_weight() for n, layer in losia.layers().items()}
    # IMP's search: every rank trains each round data-parallel and must prune to the same mask.
    with tempfile.TemporaryDirectory() as scratch:
        imp_mask, _ = search(
            {n: (m.out_features, m.in_features) for n, m in find_targets(build_model("bert")).items()},
            round_trainer(
                lambda: build_model("bert"), build_features("bert", 23), cfg, MethodConfig(rank=2, alpha=4.0)
            ),
            ImpConfig(q=0.5, steps=cfg.max_steps),
            0.25,
            Path(scratch),
        )
    out |= {f"mask.imp.{n}.rows": m.rows for n, m in imp_mask.modules.items()}
    out |= {f"mask.imp.{n}.cols": m.cols for n, m in imp_mask.modules.items()}
    # A causal LM whose examples hold different numbers of answer tokens: the loss is a mean over
    # tokens, so each rank's share is its tokens, not its examples.
    feats = build_features("llama_lm", 23)
    for i, f in enumerate(feats):
        f["labels"] = [-100] * (i % 6) + f["labels"][i % 6 :]
    lm_method = build("taso", MethodConfig(rank=2, alpha=4.0, seed=0))
    lm = lm_method.prepare(
        build_model("llama_lm"),
        derive_mask(score_importance(build_model("llama_lm"), build_batches("llama_lm", 2)), "global", 0.5),
    )
    train(lm, feats, cfg, method=lm_method, progress=False)
    return out | {f"lm.{n}": p.detach() for n, p in lm.named_parameters() if p.requires_grad}


if __name__ == "__main__":
    from safetensors.torch import save_file

    distributed.init()
    if sys.argv[2:] == ["sensitivity"]:  # a running average over batches in order: must refuse to split
        score_importance(build_model("bert"), build_batches("bert", n_batches=2), statistic="sensitivity")
    state = compute(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in state.items()}, sys.argv[1])
    distributed.close()
