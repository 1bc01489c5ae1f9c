"""calibrate: pick the task's calibration examples (seeded) → artifacts/<task>/calibration/.

The work is :func:`pipeline.steps.calibrate.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.calibrate import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run)
