"""The stack manifest, `DREAMER_HOME/adapters/manifest.json`: what the chat should have loaded.

    {"version": 3, "night": 2, "experts": [{"night": 1, "day": "...", "path": "...",
                                             "gguf_path": ".../adapter.gguf", "scale": 1.0}, ...],
     "served": {"model": ".../served/stack-<key>.gguf", "source": "<the chat GGUF it was folded from>",
                "adapters": []}}

`served` is what the chat runs: the active experts folded into one GGUF (deep sleep,
dreamer.morning.fold) when that file exists for exactly these experts, and no adapter; else
(fold off, the base alone, or a fold not made yet) `"model": null` and every expert's GGUF as
an adapter on the configured chat model. A folded file is named after its experts' folders
(`served_key`), so a version rolled back to finds its file if it was kept, and a sidecar
`stack-<key>.json` records the chat model it was folded from: a chat on another model applies
the adapters instead.

The sleep (after a promotion) and `dreamer rollback` rewrite it from the database; the chat
polls it and swaps its LoRA stack when `version` changes. It is written atomically (temporary
file, fsync, rename), so a reader sees the old stack or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from storage.paths import adapters_dir, ensure_private_dir

MANIFEST = "manifest.json"
EMPTY = {"version": 0, "night": 0, "experts": [], "served": {"model": None, "source": None, "adapters": []}}


class ManifestError(ValueError):
    """The manifest is unreadable or malformed; the message names the file and the problem."""


SERVED = "served"


def served_key(expert_paths: list[str]) -> str:
    """A folded model's name: its experts' folder names (a run id is never reused), hashed."""
    names = "\n".join(Path(p).name for p in expert_paths)
    return hashlib.sha256(names.encode("utf-8")).hexdigest()[:16]


def served_files(home: Path | None, expert_paths: list[str]) -> tuple[Path, Path]:
    """(folded GGUF, its sidecar JSON) for these experts, oldest first."""
    folder = adapters_dir(home) / SERVED
    key = served_key(expert_paths)
    return folder / f"stack-{key}.gguf", folder / f"stack-{key}.json"


def fold_made(home: Path | None, expert_paths: list[str]) -> tuple[str, str] | None:
    """(the chat model, the type) a whole fold of these experts was made from and in, or None: no
    fold on disk, or an unreadable sidecar (the adapters are then the safe way to serve the same
    memory)."""
    model, sidecar = served_files(home, expert_paths)
    if not model.is_file():
        return None
    try:
        made = json.loads(sidecar.read_text(encoding="utf-8"))
        return str(made["source"]), str(made.get("type", "Q8_0"))  # sidecars before fold_type said nothing
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def served_entry(home: Path | None, experts: list[dict]) -> dict:
    """What the chat should run for these experts: their folded GGUF if it was made, else adapters."""
    if not experts:
        return {"model": None, "source": None, "adapters": []}
    paths = [e["path"] for e in experts]
    made = fold_made(home, paths)
    if made is None:
        return {"model": None, "source": None, "adapters": [e["gguf_path"] for e in experts]}
    # The type too: a fold of the same experts made again in another type is another model, and
    # a running chat must see the manifest change to swap to it.
    return {"model": str(served_files(home, paths)[0]), "source": made[0], "type": made[1], "adapters": []}


def remove_folds_holding(home: Path | None, names: set[str]) -> list[str]:
    """Delete every folded model (and sidecar) made with one of the expert folders `names` (an
    unreadable sidecar counts as made with them); the GGUF names removed."""
    removed = []
    for sidecar in sorted((adapters_dir(home) / SERVED).glob("stack-*.json")) if names else []:
        try:
            folded = set(json.loads(sidecar.read_text(encoding="utf-8")).get("experts") or [])
        except (OSError, ValueError):
            folded = set(names)
        if folded & names:
            sidecar.with_suffix(".gguf").unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            removed.append(sidecar.with_suffix(".gguf").name)
    return removed


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
    served = data.get("served") or {"model": None, "source": None, "adapters": [e.get("gguf_path") for e in experts]}
    return {"version": version, "night": int(data.get("night", 0)), "experts": experts, "served": served}


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
