"""Errors that mean "your input is wrong" (shown as one line), as opposed to bugs (shown with a traceback).

Only these classes: a ``KeyError`` or ``FileNotFoundError`` from deep inside a library is a bug
to see whole, not a message to shorten.
"""

from pipeline.params import ParamsError
from taso.data import DataError
from taso.io import ArtifactError, InputFileError
from taso.train import NonFiniteLossError


class RegistryError(LookupError):
    """A registered model, alias or version does not exist; the message lists what does.

    Defined here, not in :mod:`pipeline.registry`, so that naming it does not import MLflow.
    """


USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError,
    DataError,
    ArtifactError,
    NonFiniteLossError,
    RegistryError,
    InputFileError,
)
