"""A stage as tests/test_distributed.py runs it: ``python -m dist_signal_worker --root DIR`` starts
itself again under torchrun as every distributed stage does (``stages/_args.py``, with
``distributed.nproc`` from ``DIR/params.yaml``), and its ranks train a tiny BERT with TASO,
checkpointing to ``DIR/ckpt.pt``; rank 0 writes the trained weights to ``DIR/out.safetensors``.
With ``DIR/slow`` present every step sleeps, so that a SIGTERM lands mid-run (rank 0 touches
``DIR/started`` after its second step, so the test knows training is under way).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import build_batches, build_features, build_model  # noqa: E402

from taso import distributed  # noqa: E402
from taso.importance import score_importance  # noqa: E402
from taso.masks import derive_mask  # noqa: E402
from taso.methods import MethodConfig, build  # noqa: E402
from taso.train import TrainConfig, default_loss, train  # noqa: E402

STEPS = 40
CONFIG = TrainConfig(lr=1e-2, batch_size=8, max_steps=STEPS, seed=0, warmup_ratio=0.0, checkpoint_every=1000)


def trained(checkpoint: Path | None, slow: bool = False):
    """The tiny model trained for STEPS steps (from ``checkpoint`` when it exists): its trainable weights."""
    importance = score_importance(build_model("bert"), build_batches("bert", n_batches=4, batch_size=4))
    method = build("taso", MethodConfig(rank=2, alpha=4.0, seed=0))
    model = method.prepare(build_model("bert"), derive_mask(importance, "global", 0.5))
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        if slow:
            if len(calls) == 3 and distributed.is_main():
                (checkpoint.parent / "started").touch()
            time.sleep(0.2)
        return default_loss(model, batch)

    train(
        model, build_features("bert", 64), CONFIG, method=method, checkpoint=checkpoint, loss_fn=loss_fn, progress=False
    )
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def run(root: Path) -> None:
    from safetensors.torch import save_file

    state = trained(root / "ckpt.pt", slow=(root / "slow").exists())
    if distributed.is_main():
        save_file(state, root / "out.safetensors")


if __name__ == "__main__":
    from stages._args import stage_main

    stage_main(run, per=None, distributed=True)
