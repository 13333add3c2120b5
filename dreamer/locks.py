"""`pid_lock`: an exclusive, non-blocking file lock that remembers who holds it.

Used for "one sleep at a time" (sleep.lock) and "one scheduler per DREAMER_HOME"
(scheduler.lock). flock is released by the kernel when the holder dies, so a crash never
leaves a stale lock behind; the pid written inside is only there to name the holder.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from storage.paths import ensure_private_dir, make_private


@contextmanager
def pid_lock(path: Path, busy: Callable[[str], Exception]):
    """Hold `path` exclusively; if another process holds it, raise `busy(holder_pid)`."""
    ensure_private_dir(path.parent)
    handle = open(path, "a+")
    make_private(path)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
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
