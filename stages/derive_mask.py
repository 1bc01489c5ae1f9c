"""derive-mask: the region the task trains on → artifacts/<task>/mask/.

The work is :func:`pipeline.steps.derive_mask.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.derive_mask import run
from stages._args import stage_main


def splits(params) -> bool:
    """IMP's rounds of training split over torchrun ranks like the train stage; a mask read or
    derived from importance takes seconds, in one process. Per params, not per task: an IMP task
    that reuses a mask still starts the ranks, and its helpers return at once."""
    return params.train.method_class().searches_region


if __name__ == "__main__":
    stage_main(run, distributed=splits)
