"""analyze: how the tasks' core regions relate → artifacts/analysis/ (overlap heatmap, per-layer profiles).

The work is :func:`pipeline.steps.analyze.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.analyze import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run, per=None)
