"""Conversations as JSON Lines, for `dreamer import` and `dreamer export`.

One conversation per line:

    {"day": "YYYY-MM-DD", "messages": [{"role": "user", "content": "..."}, ...], "title": "optional"}

Optional, written by export only where they differ from the default, and honoured on import so
a round trip keeps what no night may learn: `"learn": false` on the conversation or a message
("don't learn this"), and a message's `"status"`: `interrupted` or `cut` (an unfinished reply,
never learned; default `complete`).

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

KEYS = {"day", "messages", "title", "learn"}
MESSAGE_KEYS = {"role", "content", "status", "learn"}
STATUSES = ("complete", "interrupted", "cut")
DEFAULTS = {"status": "complete", "learn": True}


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
    if not isinstance(obj.get("learn", True), bool):
        raise ValueError("'learn' must be true or false")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message) <= MESSAGE_KEYS:
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content' (and optionally "
                             "'status', 'learn')")
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"messages[{i}].content must be a string")
        if message.get("status", "complete") not in STATUSES:
            raise ValueError(f"messages[{i}].status must be one of {', '.join(STATUSES)}, got {message['status']!r}")
        if not isinstance(message.get("learn", True), bool):
            raise ValueError(f"messages[{i}].learn must be true or false")
        # the optional keys only where they differ from the default: a plain record parses as before
        clean.append({"role": message["role"], "content": message["content"],
                      **{k: message[k] for k in ("status", "learn") if message.get(k, DEFAULTS[k]) != DEFAULTS[k]}})
    return {"day": day, "title": title, "messages": clean, **({"learn": False} if obj.get("learn") is False else {})}


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
            {"role": m["role"], "content": m["content"],
             **({"status": m["status"]} if m["status"] != "complete" else {}),
             **({"learn": False} if m.get("excluded_at") else {})}
            for m in store.messages(conversation["id"])
            if m["status"] != "generating"
        ]
        if messages:
            yield {"day": conversation["day"], "title": conversation["title"], "messages": messages,
                   **({"learn": False} if conversation.get("excluded_at") else {})}


def export_file(store: Store, path: Path, day: date | str | None = None) -> int:
    """Write conversations to `path` (JSON Lines, UTF-8); returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for record in iter_transcripts(store, day):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
