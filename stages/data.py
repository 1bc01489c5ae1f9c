"""data: check every split of the task and fingerprint it → artifacts/<task>/data/ (runs on every ``dvc repro``).

The work is :func:`pipeline.steps.data.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.data import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run)
