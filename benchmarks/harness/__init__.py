"""What the benchmark scripts share: task specs, the resumable results store, the process pool,
memory measurement, table cells, and the GLUE sweep's plan (sweep.py) and tables (report.py). Scripts run as ``python benchmarks/<name>.py``, which puts
this folder's parent on ``sys.path``, so they import ``harness`` directly."""
