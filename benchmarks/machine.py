"""What every result file records about where it ran, and how it is written.

    record = {"command": command_line("benchmarks.x", argv), "machine": machine(), ...}
    write_record(out, record)
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine(load: bool = False) -> dict:
    """CPU, cores and Python; with `load`, the 1-minute load average now (a shared machine's caveat)."""
    described = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    if load:
        described["load_at_start"] = os.getloadavg()[0]
    return described


def git_commit() -> str:
    """The checkout's commit, marked `+changes` when dreamer's code differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "dreamer", "storage", "agent"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()  # untracked: a worktree's links
    return head.stdout.strip() + ("+changes" if dirty else "")


def command_line(module: str, argv: list[str] | None) -> str:
    return f"python -m {module} " + shlex.join(argv if argv is not None else sys.argv[1:])  # as typed, quotes too


def write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
