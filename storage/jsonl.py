"""JSON Lines files read strictly: the first bad line is named with its number and the reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class JsonlError(ValueError):
    """A bad line in a JSON Lines file; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int, reason: str) -> None:
        super().__init__(f"{path}, line {line}: {reason}" if line else f"{path}: {reason}")
        self.line = line
        self.reason = reason


def check_object(obj: object, allowed: set[str]) -> dict:
    """A JSON object with no keys beyond `allowed`, or ValueError naming the first stray key."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return obj


def read_jsonl(path: Path, parse: Callable[[object], T], error: type[JsonlError] = JsonlError) -> list[T]:
    """Parse every non-blank line with `parse` (which raises ValueError), all or nothing."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise error(path, 0, f"cannot read: {err.strerror}") from None
    records = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(path, number, f"invalid UTF-8 at byte {err.start}") from None
        if not text.strip():
            continue
        try:
            records.append(parse(json.loads(text)))
        except json.JSONDecodeError as err:
            raise error(path, number, f"invalid JSON: {err.msg} (column {err.colno})") from None
        except RecursionError:
            raise error(path, number, "JSON nested too deeply") from None
        except ValueError as err:
            raise error(path, number, str(err)) from None
    return records
