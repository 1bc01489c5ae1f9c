"""derive-mask: the region the task trains on → artifacts/<task>/mask/.

The work is :func:`pipeline.steps.derive_mask.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.derive_mask import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run)
