"""train: the task's adapter, by the training method params name → artifacts/<task>/adapter/ (PEFT format), curve, train.json.

The work is :func:`pipeline.steps.train.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.train import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run, distributed=True)
