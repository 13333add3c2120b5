"""The adapter stack on disk: one folder per promoted night, and a manifest the chat reads.

    DREAMER_HOME/adapters/
        manifest.json              {"version": V, "night": N, "experts": [{"night", "path", "gguf_path", "scale"}]}
        run-0007/                  adapter_config.json, adapter_model.safetensors, metadata.json (night, run_id),
                                   adapter.gguf (the same expert for llama.cpp, dreamer.morning.export_gguf),
                                   writer/ (the dream writer, when it learned that night: dreamer.sleep.dreaming)
        .candidate-run-0009/       tonight's expert while it is saved and exported

A folder is named after the sleep run that trained it, never after its night: a run id is
never reused, so a folder left by a killed night can never collide with a later one (storage.
recovery removes it). Folders of the earlier `night-NNNN` layout stay valid: the database names
each expert's path. The database (`adapters`, `stack_versions`) is the source of truth; the
manifest (storage.manifest) is rewritten from it after every promotion and rollback, atomically.
Every file is 0600 and every folder 0700.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from storage import Store
from storage import manifest
from storage.ledger import adapters as adapter_rows
from storage.ledger import set_gguf_path, stack_manifest, versions
from storage.paths import ensure_private_dir, make_private

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "metadata.json")


class DamagedExpert(RuntimeError):
    """An expert's files are missing or unreadable; the message names the night, the file and the fix."""


def candidate_dir(root: Path, run_id: int) -> Path:
    return root / f".candidate-run-{run_id:04d}"


def expert_dir(root: Path, run_id: int) -> Path:
    return root / f"run-{run_id:04d}"


def active_paths(store: Store) -> list[Path]:
    return [Path(row["path"]) for row in adapter_rows(store, "active")]


def save_candidate(model, directory: Path, metadata: dict) -> Path:
    """Write tonight's `new` adapter as a standalone PEFT folder plus metadata.json."""
    from dreamer.lm.weights import NEW

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


def place_expert(candidate: Path, root: Path, run_id: int) -> Path:
    """Make the saved, exported candidate final: private, on disk (fsync), renamed to run-NNNN."""
    final = expert_dir(root, run_id)
    if final.exists():  # a run id is never reused, so only a hand-made folder can be here
        raise FileExistsError(f"{final} already exists: refusing to overwrite it")
    ensure_private_dir(candidate)
    for item in sorted(candidate.rglob("*")):  # the dream writer, if it learned tonight, is a sub-folder
        if item.is_dir():
            ensure_private_dir(item)
            continue
        make_private(item)
        with open(item, "rb") as handle:  # a power cut after the commit must not leave an empty expert
            os.fsync(handle.fileno())
    candidate.rename(final)
    directory = os.open(root, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return final


def write_manifest(store: Store, root: Path) -> Path:
    """Rewrite the manifest from the database: the active version and its experts, in order."""
    return manifest.write_manifest(stack_manifest(store, root.parent), root.parent)


def discard(path: Path | None) -> None:
    if path is not None and path.exists():
        shutil.rmtree(path, ignore_errors=True)


# --- damage ----------------------------------------------------------------------------------
def peft_problem(folder: Path) -> str | None:
    """What is wrong with an expert's PEFT files (the sleep and `dreamer eval` load them), or None."""
    from safetensors.numpy import load_file  # numpy, not torch: `dreamer memory` stays quick

    folder = Path(folder)
    if not folder.is_dir():
        return f"its folder {folder} is missing"
    for name in PEFT_FILES:
        path = folder / name
        try:
            if name.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
            else:
                if not load_file(str(path)):
                    return f"{path} holds no tensors"
        except FileNotFoundError:
            return f"{path} is missing"
        except Exception as err:  # safetensors raises its own SafetensorError; JSON a ValueError
            return f"{path} is unreadable ({type(err).__name__}: {err})"
    return None


def gguf_problem(path: str | Path | None) -> str | None:
    """What is wrong with an expert's llama.cpp GGUF (the chat loads it), or None."""
    if not path:
        return "it has no llama.cpp export"
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        if not reader.tensors:
            return f"{path} holds no tensors"
        for tensor in reader.tensors:  # a truncated file ends inside a tensor's data
            if tensor.data.nbytes != tensor.n_bytes:
                return f"{path} is truncated"
    except FileNotFoundError:
        return f"{path} is missing"
    except Exception as err:  # gguf raises ValueError, struct.error, IndexError... on a bad file
        return f"{path} is unreadable ({type(err).__name__}: {err})"
    return None


def rollback_past(store: Store, night: int) -> int:
    """The newest stack version without `night`: where `dreamer rollback` can go to drop it."""
    return max(v["id"] for v in versions(store) if night not in v["nights"])


def damaged(store: Store, row: dict, problem: str) -> DamagedExpert:
    target = rollback_past(store, row["night"])
    return DamagedExpert(
        f"night {row['night']}'s expert is damaged: {problem}. Restore the file from a backup, or go back to the "
        f"stack without it with `dreamer rollback {target}` (the turns of the nights rolled back wait for the "
        "next sleep, so nothing you said is lost)")


def check_active_peft(store: Store) -> None:
    """Raise DamagedExpert for the first active expert whose PEFT files cannot be loaded."""
    for row in adapter_rows(store, "active"):
        problem = peft_problem(Path(row["path"]))
        if problem:
            raise damaged(store, row, problem)


def reexport_damaged_ggufs(store: Store) -> list[str]:
    """Rebuild the llama.cpp export of every active expert whose GGUF is damaged; one line each."""
    from dreamer.morning.export_gguf import export_expert

    repairs = []
    for row in adapter_rows(store, "active"):
        problem = gguf_problem(row["gguf_path"])
        if problem:
            path = export_expert(Path(row["path"]))
            set_gguf_path(store, row["id"], str(path))
            repairs.append(f"night {row['night']}'s llama.cpp export was damaged ({problem}): rebuilt as {path}")
    return repairs
