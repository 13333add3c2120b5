"""The *day* a message belongs to.

A day runs from the configured boundary (default 04:00 local time) to the same time the next
morning, so a chat at 01:30 still belongs to the previous evening's day: that is the day
whose sleep will consolidate it.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta

_BOUNDARY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_boundary(text: str, name: str = "day_boundary") -> time:
    """Parse "HH:MM" into a time, naming the bad value otherwise.

    >>> parse_boundary("04:00")
    datetime.time(4, 0)
    """
    match = _BOUNDARY.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{name} must be HH:MM (00:00-23:59), got {text!r}")
    return time(int(match.group(1)), int(match.group(2)))


def day_of(moment: datetime, boundary: time = time(4, 0)) -> date:
    """The day `moment` belongs to, in `moment`'s own time zone (local when naive).

    >>> day_of(datetime(2026, 11, 22, 1, 30))
    datetime.date(2026, 11, 21)
    >>> day_of(datetime(2026, 11, 22, 4, 0))
    datetime.date(2026, 11, 22)
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone()  # to local time: the user's evening is local
    shift = timedelta(hours=boundary.hour, minutes=boundary.minute)
    return (moment.replace(tzinfo=None) - shift).date()


def parse_day(text: str) -> date:
    """Parse YYYY-MM-DD, naming the bad value otherwise."""
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"day must be YYYY-MM-DD, got {text!r}") from None
