"""Exception types: every error caused by user input is a :class:`KwsError`.

The CLI prints a ``KwsError`` as one line (``kws: error: ...``) instead of a
traceback; anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "AudioError", "BankError", "CheckpointError", "ConfigError", "DataError", "DeviceError", "EnrollmentError",
    "ExportError", "KwsError",
]


class KwsError(Exception):
    """Base class for errors the user can act on (bad file, bad option, ...)."""


class AudioError(KwsError):
    """An audio file or stream could not be read or is unusable."""


class CheckpointError(KwsError):
    """A model checkpoint (or ONNX model) is missing, malformed or incompatible."""


class DataError(KwsError):
    """A corpus is missing, malformed, or a download failed."""


class BankError(KwsError):
    """A keyword bank file is malformed or does not match the model."""


class EnrollmentError(KwsError):
    """Enrolment clips were refused (silence, wrong word, too long, ...)."""


class DeviceError(KwsError):
    """An audio device is missing, vanished, or failed."""


class ConfigError(KwsError):
    """A training config file or ``--set`` override is malformed."""


class ExportError(KwsError):
    """An export was refused: the ONNX model does not reproduce the source model."""
