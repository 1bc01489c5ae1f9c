"""check-params: validate the whole of params.yaml on every ``dvc repro`` (it writes nothing).

The work is :func:`pipeline.steps.check_params.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.check_params import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run, per=None)
