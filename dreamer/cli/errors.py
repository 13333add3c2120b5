"""The command line's one error path: a clean line on the terminal, the traceback in logs/.

Every command runs inside `DreamerGroup.invoke`. An error raised by dreamer's own layers
(a class defined in `storage`, `agent` or `dreamer`: bad config, bad file, a damaged expert, a
busy sleep) is bad input or a known state: its message is the line. Anything else is a fault:
the line names its type and points at the log. Either way the full traceback is appended to
`DREAMER_HOME/logs/errors.log` (on a read-only or full home, to the temporary directory, and
the line says where), so a failed nightly run always leaves one. A closed pipe
(`dreamer log | head`) is not an error and prints nothing.

Lives apart from `dreamer.cli.main` so every command module can use it without importing the CLI
(which imports them).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
import tempfile
import traceback
from datetime import datetime
from pathlib import Path

import click

from storage import dreamer_home
from storage.paths import ensure_private_dir

LOG_NAME = "errors.log"
LOG_MAX_BYTES = 1 << 20  # then errors.log moves to errors.log.1: months of nights must not fill the disk
OWN_PACKAGES = ("storage", "agent", "dreamer")


class DreamerError(click.ClickException):
    """A user-facing error: printed as `Error: ...`, exit code 1."""


def is_domain_error(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in OWN_PACKAGES


def describe(err: BaseException) -> str:
    """One line for the user."""
    from storage.paths import database_path
    from storage.store import describe_sqlite_error

    if isinstance(err, sqlite3.Error):
        return describe_sqlite_error(err, database_path(dreamer_home()))
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return ("out of memory: use --preset cpu-tiny, or lower load.max_seq_len / distill.batch_size in a preset "
                "of your own")
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return f"the disk is full{where}: free some space and try again"
    if isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {err.filename or 'a file'}: {err.strerror} (is DREAMER_HOME read-only?)"
    text = " ".join(str(err).split()) or "(no message)"
    return text if is_domain_error(err) else f"{type(err).__name__}: {text}"


def log_traceback(err: BaseException, folder: Path | None = None) -> Path:
    """Append the traceback, with the command line and the time, to logs/errors.log; its path."""
    folder = ensure_private_dir(folder or dreamer_home() / "logs")
    path = folder / LOG_NAME
    if path.exists() and path.stat().st_size > LOG_MAX_BYTES:
        os.replace(path, folder / f"{LOG_NAME}.1")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"--- {datetime.now().isoformat(timespec='seconds')}  pid {os.getpid()}  "
                     f"{' '.join(sys.argv)}\n")
        handle.write("".join(traceback.format_exception(err)))
    os.chmod(path, 0o600)
    return path


def error_line(err: BaseException) -> str:
    """The line to show; the traceback is saved first, in logs/ or, if the home is read-only or
    full, in the temporary directory (the line then says where)."""
    line = describe(err)
    try:
        path = log_traceback(err)
    except OSError:
        try:
            path = log_traceback(err, Path(tempfile.gettempdir()) / f"dreamer-{os.getuid()}")
        except OSError as log_err:
            return f"{line} (the traceback could not be saved: {log_err.strerror or log_err})"
        return f"{line} (traceback in {path})"
    return line if is_domain_error(err) else f"{line} (traceback in {path})"


class DreamerGroup(click.Group):
    """The click group whose commands all go through the one error path, and whose `--help` lists
    each command's whole first sentence (click cuts it at the terminal's width with "...")."""

    def format_commands(self, ctx, formatter) -> None:
        rows = [(name, command.get_short_help_str(limit=10**4)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:
            raise  # click's main() quiets it: `dreamer log | head` is not an error
        except Exception as err:
            raise DreamerError(error_line(err)) from None
