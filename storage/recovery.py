"""The recovery pass: what a killed night (or rollback) left behind, repaired at the next start.

    dreamer status          # every command runs it first (dreamer.cli.open_store)
    dreamer sleep --now     # every sleep runs it under its lock, before it collects the turns

SIGKILL cannot be caught, so every state a kill can leave must be one the next start can
repair. The sleep writes in this order, and the pass knows what each step leaves:

1. `adapters/.candidate-run-N/` (the expert being saved and exported), and with deep sleep
   `adapters/served/stack-<key>.{gguf,json}.partial-PID` (a fold killed mid-write): removed. A
   whole fold of a stack that was never promoted is not served (the manifest names the active
   stack's) and goes with the next promotion's clean-up.
2. rename to `adapters/run-N/` (N is the sleep run's id, so a name is never reused): a folder
   that no adapter row names, written by a run of this database that was not promoted, was
   killed before its commit; removed. Its turns never left the waiting list (step 3 marks
   them), so the next night learns them again. A folder no known run wrote (a home restored
   from an older backup) is left alone: it may be the only copy of a night.
3. one transaction: the expert active, a new stack version, the turns consolidated, the run
   `promoted` (storage.ledger.promote). A run whose process died before it stays `running`:
   marked `interrupted`.
4. (`dreamer forget`) the folders of experts the database marks `forgotten`, and folded models
   that hold one: removed (the forget committed, and was killed before it deleted them).
5. `adapters/manifest.json` rewritten from the database (what a running chat loads): a manifest
   that disagrees with the database, or a `manifest.json.tmp` left by a kill, is rewritten.

The pass runs only while no sleep holds `sleep.lock` (a live sleep's candidate is no orphan)
and only on a writable home. It returns one line per repair, for the user and the sleep's log.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from storage import ledger
from storage.locks import pid_lock
from storage.manifest import SERVED, ManifestError, manifest_path, read_manifest, remove_folds_holding, write_manifest
from storage.paths import adapters_dir
from storage.store import Store

CANDIDATE = re.compile(r"^\.candidate-run-\d+$")
EXPERT = re.compile(r"^(run|night)-\d+$")  # night-NNNN: folders of the layout before run-NNNN


class _Busy(Exception):
    pass


def sleep_lock_path(home: Path) -> Path:
    return Path(home) / "sleep.lock"


def reconcile(store: Store, home: Path, *, holding_lock: bool = False) -> list[str]:
    """Repair what a killed sleep left; `holding_lock` when the caller already holds sleep.lock."""
    if store.readonly:
        return []
    if holding_lock:
        return _reconcile(store, Path(home))
    try:
        with pid_lock(sleep_lock_path(home), lambda pid: _Busy(pid)):
            return _reconcile(store, Path(home))
    except _Busy:
        return []  # a sleep runs: it repaired everything when it started, under this lock


def _reconcile(store: Store, home: Path) -> list[str]:
    repairs = _settle_runs(store)
    root = adapters_dir(home)
    if root.is_dir():
        repairs += _remove_orphans(store, root)
        repairs += _remove_partial_folds(root)
    repairs += _sync_manifest(store, home)
    return repairs


def _settle_runs(store: Store) -> list[str]:
    """Runs left `running` (or marked otherwise after a commit, by the layout before one-step promotion)."""
    repairs = []
    promoted_runs = {row["run_id"] for row in store.db["adapters"].rows}
    for row in store.db["sleep_runs"].rows_where("status in ('running', 'interrupted', 'failed')"):
        if row["id"] in promoted_runs:  # its promotion committed; only the run's own row lagged behind
            with store.write():
                store.db["sleep_runs"].update(row["id"], {"status": "promoted"})
            repairs.append(f"sleep run {row['id']} had promoted its night before it stopped: recorded as promoted")
        elif row["status"] == "running":
            ledger.finish_run(store, row["id"], "interrupted",
                              reason="the process ended without finishing (killed or crashed); nothing changed")
            pid = f" (pid {row['pid']})" if row.get("pid") else ""
            repairs.append(f"sleep run {row['id']}{pid} was killed: recorded as interrupted; its messages wait for "
                           "the next night")
    return repairs


def _run_of(folder: Path) -> int | None:
    """The sleep run that wrote an expert folder: its metadata.json says (both layouts), else its name."""
    try:
        run_id = json.loads((folder / "metadata.json").read_text()).get("run_id")
        if isinstance(run_id, int):
            return run_id
    except (OSError, ValueError):
        pass
    return int(folder.name.split("-")[1]) if folder.name.startswith("run-") else None


def _remove_orphans(store: Store, root: Path) -> list[str]:
    """Remove what a killed night left: candidates, and expert folders of this database's own runs that
    never committed. A folder no row names and no known run wrote (a home restored from an older
    backup, a database moved away) is left alone: it may be the only copy of a night."""
    named = {Path(row["path"]).name for row in store.db["adapters"].rows}
    forgotten = {Path(row["path"]).name for row in store.db["adapters"].rows_where("status = 'forgotten'")}
    unpromoted = {row["id"] for row in store.db["sleep_runs"].rows_where("status != 'promoted'")}
    repairs = []
    for entry in sorted(root.iterdir()):
        orphan = EXPERT.match(entry.name) and entry.name not in named and _run_of(entry) in unpromoted
        if entry.is_dir() and (CANDIDATE.match(entry.name) or orphan):
            shutil.rmtree(entry)
            repairs.append(f"removed {entry.name}/, left by a sleep killed before its promotion")
        elif entry.is_dir() and entry.name in forgotten:
            shutil.rmtree(entry)
            repairs.append(f"removed {entry.name}/, a forgotten night's expert (`dreamer forget` was stopped before)")
        elif entry.is_dir() and entry.name in named:
            for leftover in entry.glob("*.tmp"):  # a GGUF export killed mid-write
                leftover.unlink()
                repairs.append(f"removed {entry.name}/{leftover.name}, left by a killed export")
    for name in remove_folds_holding(root.parent, forgotten):
        repairs.append(f"removed {SERVED}/{name}, a folded model with a forgotten night in it")
    return repairs


def _remove_partial_folds(root: Path) -> list[str]:
    """No fold runs now (it holds sleep.lock, as this pass does): every partial file was killed."""
    folder = root / SERVED
    partials = sorted(folder.glob("stack-*.partial-*")) if folder.is_dir() else []
    for partial in partials:
        partial.unlink(missing_ok=True)
    return [f"removed {SERVED}/{p.name}, left by a fold killed mid-write" for p in partials]


def _sync_manifest(store: Store, home: Path) -> list[str]:
    wanted = ledger.stack_manifest(store, home)
    leftover = manifest_path(home).with_suffix(".json.tmp")
    repairs = []
    if leftover.exists():
        leftover.unlink()
        repairs.append("removed manifest.json.tmp, left by a killed write")
    try:
        current = read_manifest(home)
    except ManifestError:
        current = None
    if current != wanted:
        write_manifest(wanted, home)
        repairs.append(f"rewrote the stack manifest from the database (stack v{wanted['version']}, "
                       f"{len(wanted['experts'])} experts): a running chat now loads it")
    return repairs
