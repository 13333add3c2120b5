"""`pid_lock`: an exclusive file lock that remembers who holds it; `lock_holder`: who does.

Used for "one sleep at a time" (sleep.lock), "one scheduler per DREAMER_HOME"
(scheduler.lock), and by the recovery pass, which repairs what a killed sleep left only while
no sleep runs. flock is released by the kernel when the holder dies, even by SIGKILL, so a
crash never leaves a stale lock behind; the pid written inside is only there to name the holder.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from storage.paths import ensure_private_dir, make_private

RETRY_SECONDS = 0.05


@contextmanager
def pid_lock(path: Path, busy: Callable[[str], Exception], wait: float = 0.0):
    """Hold `path` exclusively; if another process still holds it after `wait` seconds, raise `busy(holder_pid)`.

    A short `wait` lets a sleep start while a command's recovery pass holds the lock for a moment.
    """
    ensure_private_dir(path.parent)
    handle = open(path, "a+")
    make_private(path)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(RETRY_SECONDS)
                continue
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise busy(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def lock_holder(path: Path) -> int | None:
    """The pid holding `path` now, or None when nobody does (a missing file is not held). Never takes it."""
    try:
        handle = open(path)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
