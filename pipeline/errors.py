"""Errors that mean "your input is wrong" (shown as one line), as opposed to bugs (shown with a traceback)."""

from pipeline.params import ParamsError
from taso.data import DataError
from taso.io import ArtifactError
from taso.train import NonFiniteLossError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError,
    DataError,
    ArtifactError,
    NonFiniteLossError,
    LookupError,
    FileNotFoundError,
)
