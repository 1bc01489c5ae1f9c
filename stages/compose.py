"""compose: a mask composed from several tasks' core regions → artifacts/compositions/<name>/mask/.

The work is :func:`pipeline.steps.compose.run`; this module is what dvc.yaml runs.
"""

from pipeline.steps.compose import run
from stages._args import stage_main

if __name__ == "__main__":
    stage_main(run, per="name")
