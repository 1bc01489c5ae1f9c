"""Glue that runs taso as a product: params schema, artifact paths, MLflow tracking and registry, the CLI."""
