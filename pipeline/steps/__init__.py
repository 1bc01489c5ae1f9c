"""Each DVC stage's work, one module per stage, below both front doors: ``stages/`` (what dvc.yaml
runs) and the ``taso`` CLI. A step reads params, calls taso/, writes exactly the stage's declared
outs, and logs one MLflow run; a step the training method does not need writes only a ``meta.json``
saying so."""
