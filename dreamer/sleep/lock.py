"""One sleep at a time, and signals that cannot cut a promotion in half.

`sleep_lock` is held by every sleep and by `dreamer rollback` (whoever starts them: the CLI,
the scheduler, systemd). `sigterm_as_interrupt` makes SIGTERM unwind like Ctrl-C, so a killed
night records itself `interrupted`; `signals_deferred` holds both while a promotion renames,
commits and rewrites the manifest.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from dreamer.sleep.outcome import SleepBusy
from storage.locks import pid_lock
from storage.recovery import sleep_lock_path

# Another command's recovery pass holds the lock for milliseconds, or up to the database's busy
# timeout when it is busy: a scheduled night must not be lost to a `dreamer status`.
LOCK_WAIT_SECONDS = 45.0


def sleep_lock(home: Path, wait: float | None = None):
    """One sleep at a time, whoever starts it (the CLI, the scheduler, systemd)."""
    return pid_lock(sleep_lock_path(home),
                    lambda pid: SleepBusy(f"another sleep is already running (pid {pid}); only one runs at a time"),
                    wait=LOCK_WAIT_SECONDS if wait is None else wait)


@contextmanager
def sigterm_as_interrupt():
    """A kill (SIGTERM) unwinds like Ctrl-C, so the cleanup below runs either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM wait until the block is done: a promotion is made whole or not at all.

    Python runs signal handlers in the main thread whichever thread the kernel picked, so a
    handler that only notes the signal holds it for the whole process (a thread's signal mask
    would not: torch's threads would take it). The interrupt is raised when the block ends.
    SIGKILL cannot be held; what it leaves, storage.recovery repairs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        raise KeyboardInterrupt(f"signal {caught[0]}")
