"""pipeline: taso as a product: params, MLflow tracking and registry, each stage's work (``steps``), the CLI."""

import os

# No hub, no telemetry: models and data are local, and runs must not phone home. Set before
# any stage imports transformers, datasets or mlflow, which read these at import time.
for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)
