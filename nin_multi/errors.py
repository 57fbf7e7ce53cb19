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


class RunBusyError(RunDirError):
    """Another process holds the run directory's lock."""


class DamagedFileError(WeightsError):
    """A weights or checkpoint file that cannot be read back as written: truncated, not a zip, a bad
    header, or arrays that do not match the checksum stored with them. ``reason``: the cause alone."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class WriteError(NinMultiError):
    """A file could not be written (disk full, file-size limit, I/O error, no permission); its
    temporary file is gone and the destination is as it was."""

    def __init__(self, message: str, path=None, errno=None):
        super().__init__(message)
        self.path, self.errno = path, errno


class Interrupted(NinMultiError):
    """Ctrl-C or SIGTERM during a run: the message says what was kept and how to continue."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """Raised by the CLI's SIGTERM handler (what schedulers send before preempting a job) and its SIGHUP
    handler (a closed terminal), so every ``except KeyboardInterrupt`` clean-up path treats them like
    Ctrl-C; the exit status is 128 + the signal's number (143, 129)."""

    exit_code = 143
    how = "stopped by SIGTERM"

    def __init__(self, signum: int = 15, name: str = "SIGTERM"):
        super().__init__()
        self.exit_code, self.how = 128 + signum, f"stopped by {name}"


class DistributedError(NinMultiError):
    """A data-parallel run cannot start or continue: a worker died, a port is taken, an engine is missing."""

    exit_code = 4


class InterpreterError(ConfigError):
    """The Python bound to a backend (``NIN_MULTI_PYTHON_<BACKEND>``) is missing, is not an interpreter,
    is too old, or lacks the project or the framework."""


class WorkerError(NinMultiError):
    """A backend's worker process, or the interpreter a command was handed to, died before it finished."""

    exit_code = 4
