"""promote: the promotion policy, in one place → artifacts/<task>/promotion.json.

The work is :func:`pipeline.steps.promote.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.promote import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run)
