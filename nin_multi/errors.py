"""User errors: the CLI prints these as one line and exits non-zero, without a traceback.

Anything that is not a ``NinMultiError`` is a bug and keeps its traceback.
"""


class NinMultiError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 2


class SpecError(NinMultiError):
    pass


class ImageTooSmallError(SpecError):
    pass


class ConfigError(NinMultiError):
    pass


class BackendUnavailableError(NinMultiError):
    pass


class DataError(NinMultiError):
    pass


class WeightsError(NinMultiError):
    pass


class RunDirError(NinMultiError):
    pass


class TrainingDivergedError(NinMultiError):
    exit_code = 3
