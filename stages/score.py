"""score: importance of every target weight on the calibration set → artifacts/importance/<task>/ + heatmap.

The work is :func:`pipeline.steps.score.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.score import run
from stages._args import stage_main


def splits(params) -> bool:
    """A sum (taylor) splits over torchrun ranks; the sensitivity statistic's EMA runs in batch order, in one process."""
    return params.score.statistic == "taylor"


if __name__ == "__main__":
    stage_main(run, distributed=splits)
