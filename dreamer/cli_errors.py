"""The command line's error policy: domain errors become one clean line and exit code 1.

Lives apart from `dreamer.cli` so every command module can use it without importing the CLI
(which imports them).
"""

from __future__ import annotations

import functools

import click

from storage import ConfigError, StoreError


class DreamerError(click.ClickException):
    """A user-facing error: printed as `Error: ...`, exit code 1."""


def user_errors(func):
    """Turn the domain errors of the layers below into clean CLI errors, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from agent.models import ModelError
        from storage.transcripts import TranscriptError

        try:
            return func(*args, **kwargs)
        except (ConfigError, StoreError, TranscriptError, ModelError, ValueError, RuntimeError, OSError) as err:
            raise DreamerError(str(err)) from None

    return wrapper
