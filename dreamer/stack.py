"""The adapter stack on disk: one folder per promoted night, and a manifest the chat reads.

    DREAMER_HOME/adapters/
        manifest.json              {"version": V, "night": N, "experts": [{"night", "path", "gguf_path", "scale"}]}
        night-0001/                adapter_config.json, adapter_model.safetensors, metadata.json,
                                   adapter.gguf (the same expert for llama.cpp, dreamer.export_gguf)
        night-0002/ ...
        .candidate-run-<id>/       tonight's expert until the gate decides (deleted otherwise)

The database (`adapters`, `stack_versions`) is the source of truth; the manifest
(storage.manifest) is rewritten from it after every promotion and rollback, atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from storage import Store
from storage import manifest
from storage.ledger import active_version
from storage.ledger import adapters as adapter_rows
from storage.paths import ensure_private_dir


def candidate_dir(root: Path, run_id: int) -> Path:
    return root / f".candidate-run-{run_id}"


def expert_dir(root: Path, night: int) -> Path:
    return root / f"night-{night:04d}"


def active_paths(store: Store) -> list[Path]:
    return [Path(row["path"]) for row in adapter_rows(store, "active")]


def save_candidate(model, directory: Path, metadata: dict) -> Path:
    """Write tonight's `new` adapter as a standalone PEFT folder plus metadata.json."""
    from dreamer.weights import NEW

    ensure_private_dir(directory.parent)
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(str(directory), selected_adapters=[NEW])
    nested = directory / NEW  # PEFT puts a non-default adapter in a sub-folder named after it
    if nested.is_dir():
        for item in nested.iterdir():
            item.rename(directory / item.name)
        nested.rmdir()
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    return directory


def place_expert(candidate: Path, root: Path, night: int) -> Path:
    final = expert_dir(root, night)
    if final.exists():
        raise FileExistsError(f"{final} already exists: refusing to overwrite an earlier night's expert")
    candidate.rename(final)
    metadata_path = final / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["night"] = night
    metadata_path.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    return final


def write_manifest(store: Store, root: Path) -> Path:
    """Rewrite the manifest from the database: the active version and its experts, in order."""
    rows = adapter_rows(store, "active")
    return manifest.write_manifest({
        "version": active_version(store),
        "night": rows[-1]["night"] if rows else 0,
        "experts": [{"night": r["night"], "day": r["day"], "path": r["path"], "gguf_path": r["gguf_path"], "scale": 1.0}
                    for r in rows],
    }, root.parent)


def discard(path: Path | None) -> None:
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)
