"""The stack manifest, `DREAMER_HOME/adapters/manifest.json`: what the chat should have loaded.

    {"version": 3, "night": 2, "experts": [{"night": 1, "day": "...", "path": "...",
                                             "gguf_path": ".../adapter.gguf", "scale": 1.0}, ...]}

The sleep (after a promotion) and `dreamer rollback` rewrite it from the database; the chat
polls it and swaps its LoRA stack when `version` changes. It is written atomically (temporary
file, fsync, rename), so a reader sees the old stack or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from storage.paths import adapters_dir, ensure_private_dir

MANIFEST = "manifest.json"
EMPTY = {"version": 0, "night": 0, "experts": []}


class ManifestError(ValueError):
    """The manifest is unreadable or malformed; the message names the file and the problem."""


def manifest_path(home: Path | None = None) -> Path:
    return adapters_dir(home) / MANIFEST


def read_manifest(home: Path | None = None) -> dict:
    path = manifest_path(home)
    if not path.exists():
        return dict(EMPTY)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version, experts = int(data["version"]), list(data["experts"])
        for expert in experts:
            if not isinstance(expert.get("night"), int) or not isinstance(expert.get("scale", 1.0), (int, float)):
                raise ValueError(f"bad expert entry {expert!r}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"{path}: unreadable stack manifest ({err})") from None
    return {"version": version, "night": int(data.get("night", 0)), "experts": experts}


def write_manifest(data: dict, home: Path | None = None) -> Path:
    target = manifest_path(home)
    ensure_private_dir(target.parent)
    temporary = target.with_suffix(".json.tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target
