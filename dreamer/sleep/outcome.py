"""How a night can end: the outcome it returns, and the two ways it stops early."""

from __future__ import annotations

from dataclasses import dataclass, field


class SleepBusy(RuntimeError):
    """Another sleep holds the lock."""


class SleepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the sleep; the message says what it left (true whenever it came)."""


@dataclass
class SleepOutcome:
    status: str  # nothing | dry-run | promoted | rejected
    message: str
    run_id: int | None = None
    report: str = ""
    metrics: dict = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)  # what the recovery pass fixed first
