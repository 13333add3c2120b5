"""Conversations as JSON Lines, for `dreamer import` and `dreamer export`.

One conversation per line:

    {"day": "YYYY-MM-DD", "messages": [{"role": "user", "content": "..."}, ...], "title": "optional"}

Import is all or nothing: the whole file is parsed and checked first, and the first bad line
is reported with its number and the reason; only a clean file is written, in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from storage.days import parse_day
from storage.jsonl import JsonlError, check_object, read_jsonl
from storage.store import ROLES, Store

KEYS = {"day", "messages", "title"}


class TranscriptError(JsonlError):
    """A bad line in a transcript file; the message names the line."""


def parse_record(obj: object) -> dict:
    """Validate one decoded line; raise ValueError with the reason."""
    check_object(obj, KEYS)
    if "day" not in obj:
        raise ValueError("missing 'day'")
    day = str(parse_day(obj["day"]))
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise ValueError("'title' must be a string")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"messages[{i}] must be an object with exactly 'role' and 'content'")
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"messages[{i}].content must be a string")
        clean.append({"role": message["role"], "content": message["content"]})
    return {"day": day, "title": title, "messages": clean}


def read_transcripts(path: Path) -> list[dict]:
    """Parse a whole file or raise TranscriptError for the first bad line. Blank lines are skipped."""
    return read_jsonl(path, parse_record, TranscriptError)


def import_file(store: Store, path: Path) -> list[int]:
    """Check the whole file, then import it in one transaction. Returns the new conversation ids."""
    return store.import_conversations(read_transcripts(path))


def iter_transcripts(store: Store, day: date | str | None = None) -> Iterator[dict]:
    """Conversations (oldest first) in the import format; empty ones are skipped."""
    for conversation in reversed(store.conversations(limit=-1, day=day)):
        messages = [
            {"role": m["role"], "content": m["content"]}
            for m in store.messages(conversation["id"])
            if m["status"] != "generating"
        ]
        if messages:
            yield {"day": conversation["day"], "title": conversation["title"], "messages": messages}


def export_file(store: Store, path: Path, day: date | str | None = None) -> int:
    """Write conversations to `path` (JSON Lines, UTF-8); returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for record in iter_transcripts(store, day):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
