"""One thin module per DVC stage: parse arguments, call :mod:`pipeline.steps`, exit with a clear status.

Importing ``pipeline`` (which every stage does first) sets the offline switches.
"""
