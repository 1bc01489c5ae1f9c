"""evaluate: the exported PEFT adapter, loaded as a user loads it, on the task's eval split → artifacts/<task>/metrics.json.

The work is :func:`pipeline.steps.evaluate.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.evaluate import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run)
