"""`dreamer bench`'s worker processes end when the bench is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARENT = """
import os, sys, time
sys.path.insert(0, {root!r})
from dreamer.bench.run import worker_pool
from tests.test_benchmark_workers import {task}
pool = worker_pool()
print(pool.submit(os.getpid).result(), flush=True)
pool.submit({task}, 120)
time.sleep(120)
"""


def like_a_sleep_night(seconds: float) -> str:
    """Turns SIGTERM into an interruption and returns, as `sleep_now` does."""
    from dreamer.sleep.lock import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            print("started", flush=True)  # the test kills the bench only once the night is under way
            time.sleep(seconds)
    except KeyboardInterrupt:
        return "interrupted"
    return "slept"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("task", ["sleep", "like_a_sleep_night"])
def test_worker_dies_when_the_benchmark_is_killed(task):
    script = PARENT.format(root=str(ROOT), task=task).replace("from tests.test_benchmark_workers import sleep\n", "")
    script = script.replace("pool.submit(sleep,", "pool.submit(time.sleep,")
    parent, worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True), None
    try:
        worker = int(parent.stdout.readline())
        assert worker != parent.pid and alive(worker)
        if task != "sleep":
            assert parent.stdout.readline().strip() == "started"
        parent.send_signal(signal.SIGKILL)  # no cleanup of its own can run
        parent.wait(10)
        deadline = time.monotonic() + 20
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), f"worker {worker} outlived its killed parent"
    finally:
        parent.kill()
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)
