"""Error types. Every error adeblur raises on bad input derives from :class:`AdeblurError`.

The command-line interface turns any :class:`AdeblurError` into a one-line message and a non-zero
exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` (a message or an exception) with all whitespace runs, newlines included, made one space.

    >>> one_line(ValueError("bad   file,  line 1"))
    'bad file, line 1'
    """
    joined = " ".join(str(text).split())
    return joined or (type(text).__name__ if isinstance(text, BaseException) else "")


class AdeblurError(Exception):
    """Base class of the errors that describe bad input (files, data, options), not bugs."""


class ImageError(AdeblurError, ValueError):
    """An image file that cannot be read or written. The message names the file."""


class DatasetError(AdeblurError, ValueError):
    """A dataset folder that does not match its layout. The message lists the offenders."""


class KernelError(AdeblurError, ValueError):
    """A blur-kernel file or description that cannot be used."""


class MetricError(AdeblurError, ValueError):
    """Inputs a metric cannot score (shape mismatch, empty mask, ...)."""


class ConfigError(AdeblurError, ValueError):
    """A configuration key or value that is not valid."""


class CheckpointError(AdeblurError, ValueError):
    """A checkpoint or weights file that cannot be written, read or used. The message names the file."""


class TrainingError(AdeblurError, ArithmeticError):
    """A training run that cannot go on (a loss that is not finite). The message says what to change."""
