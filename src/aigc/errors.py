"""Errors a user can act on.

Anything raised as :class:`AigcError` is printed by the CLI as one line (``aigc: error: ...``)
with exit code 2 and no traceback unless ``--debug`` is given. Programming errors stay ordinary
exceptions and keep their traceback.
"""

from __future__ import annotations


class AigcError(ValueError):
    """A problem with the user's input, files or environment, described in one sentence."""


class ConfigError(AigcError):
    """A configuration key that does not exist, or a value of the wrong type or range."""


class DataError(AigcError):
    """A dataset that cannot be found, read or used."""


class CheckpointError(AigcError):
    """A checkpoint that is missing, truncated, or not written by aigc."""
