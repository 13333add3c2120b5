"""What a killed night leaves, and the next start repairs (storage.recovery).

The kill windows themselves (SIGKILL and SIGTERM at every phase boundary and inside the
promotion, in real child processes) are exercised by benchmarks/kill_nights.py: one trial per
window here, twenty in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from storage import Store, ledger
from storage.manifest import manifest_path, read_manifest, write_manifest
from storage.recovery import reconcile, sleep_lock_path
from storage.locks import pid_lock
from tests.test_sleep import GOOD_FIGURES, night
from tests.test_versions import promote_night

ROOT = Path(__file__).resolve().parent.parent


def killed_run(store: Store) -> int:
    """A run row as SIGKILL leaves it: `running`, its process gone."""
    run = ledger.start_run(store, "2026-11-21", "test")
    with store.write():
        store.db["sleep_runs"].update(run, {"pid": 2**22 + 12345})  # above pid_max: no such process
    return run


def test_a_killed_run_is_settled_and_its_folders_removed(store, dreamer_home):
    run = killed_run(store)
    root = dreamer_home / "adapters"
    for name in (f".candidate-run-{run:04d}", f"run-{run:04d}", "night-0001"):  # saved, renamed, old layout
        (root / name).mkdir(parents=True)
        (root / name / "adapter_model.safetensors").write_bytes(b"partial")
    (root / "night-0001" / "metadata.json").write_text(json.dumps({"run_id": run}))  # the old layout said its run
    (root / "notes").mkdir()  # not dreamer's: left alone
    repairs = reconcile(store, dreamer_home)
    assert ledger.run(store, run)["status"] == "interrupted"
    assert sorted(p.name for p in root.iterdir()) == ["notes"]
    assert any("was killed" in r for r in repairs) and sum("removed" in r for r in repairs) == 3
    assert reconcile(store, dreamer_home) == []  # nothing left to repair


def test_an_expert_no_known_run_wrote_is_left_alone(store, dreamer_home):
    """A home restored from an older backup, or a database moved away: folders this database never
    made may be the only copy of a night, so the pass does not delete them."""
    for name, metadata in (("run-0009", None), ("night-0004", {"run_id": 77}), ("night-0005", None)):
        folder = dreamer_home / "adapters" / name
        folder.mkdir(parents=True)
        if metadata:
            (folder / "metadata.json").write_text(json.dumps(metadata))
    assert reconcile(store, dreamer_home) == []
    assert sorted(p.name for p in (dreamer_home / "adapters").iterdir()) == ["night-0004", "night-0005", "run-0009"]


def test_a_manifest_behind_the_database_is_rewritten(store, dreamer_home):
    promote_night(store, 1)  # committed, then killed before the manifest was written
    (dreamer_home / "adapters").mkdir(parents=True)
    write_manifest({"version": 0, "night": 0, "experts": []}, dreamer_home)
    manifest_path(dreamer_home).with_suffix(".json.tmp").write_text("{half")
    repairs = reconcile(store, dreamer_home)
    assert read_manifest(dreamer_home) == ledger.stack_manifest(store, dreamer_home)
    assert read_manifest(dreamer_home)["version"] == 1
    assert not manifest_path(dreamer_home).with_suffix(".json.tmp").exists()
    assert len(repairs) == 2


def test_a_run_killed_after_its_commit_by_the_earlier_layout_is_recorded_promoted(store, dreamer_home):
    run = promote_night(store, 1)
    with store.write():  # what SIGTERM after the commit used to record
        store.db["sleep_runs"].update(run, {"status": "interrupted"})
    reconcile(store, dreamer_home)
    assert ledger.run(store, run)["status"] == "promoted"


def test_nothing_is_touched_while_a_sleep_runs(store, dreamer_home):
    run = killed_run(store)
    candidate = dreamer_home / "adapters" / f".candidate-run-{run:04d}"
    candidate.mkdir(parents=True)
    with pid_lock(sleep_lock_path(dreamer_home), RuntimeError):
        assert reconcile(store, dreamer_home) == []
    assert candidate.exists() and ledger.run(store, run)["status"] == "running"


def test_a_late_interrupt_cannot_overwrite_a_promotion(store):
    run = promote_night(store, 1)
    assert ledger.finish_run(store, run, "interrupted") is False
    assert ledger.run(store, run)["status"] == "promoted"


def test_the_folders_of_a_killed_night_do_not_block_the_next(day_store, tiny_dir, dreamer_home, fake_judge,
                                                             monkeypatch):
    """The wedge: a night killed between the rename and the commit left `night-0001/`, and every
    later night failed with FileExistsError. Now the folder is named after the run and removed."""
    from dreamer.sleep import gate as gate_stage

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    run = killed_run(day_store)
    for name in ("night-0001", f"run-{run:04d}", f".candidate-run-{run:04d}"):
        (dreamer_home / "adapters" / name).mkdir(parents=True)
    (dreamer_home / "adapters" / "night-0001" / "metadata.json").write_text(json.dumps({"run_id": run}))
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert outcome.status == "promoted", outcome.message
    assert ledger.run(day_store, run)["status"] == "interrupted"
    experts = sorted(p.name for p in (dreamer_home / "adapters").iterdir() if p.is_dir() and p.name != "served")
    assert experts == [f"run-{run + 1:04d}"]
    assert len(outcome.repairs) == 4 and day_store.unconsolidated_count() == 0


def test_sigterm_after_the_commit_says_the_night_was_promoted(day_store, tiny_dir, dreamer_home, fake_judge,
                                                              monkeypatch):
    """SIGTERM inside the promotion waits for it: the manifest is written, and the message is true."""
    from dreamer.sleep import gate as gate_stage
    from dreamer.morning import stack
    from dreamer.sleep.outcome import SleepInterrupted

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    promote = ledger.promote

    def promote_then_sigterm(*args, **kwargs):
        result = promote(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(ledger, "promote", promote_then_sigterm)
    with pytest.raises(SleepInterrupted, match="already recorded promoted"):
        night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert ledger.runs(day_store)[0]["status"] == "promoted" and day_store.unconsolidated_count() == 0
    assert read_manifest(dreamer_home)["version"] == 1  # written before the interrupt was let through
    assert not list((dreamer_home / "adapters").glob("*.tmp")) and stack.write_manifest


def test_a_killed_scheduled_sleep_is_repaired_by_the_daemon(store, dreamer_home):
    from dreamer.scheduler.daemon import reap

    run = killed_run(store)
    child = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    repairs = reap(child, dreamer_home)
    assert child.returncode == -signal.SIGKILL
    assert any("was killed" in r for r in repairs) and ledger.run(store, run)["status"] == "interrupted"


def test_kills_at_every_phase_boundary_and_inside_the_promotion(tmp_path):
    """One trial per window and signal, in real child processes (benchmarks/kill_nights.py)."""
    out = tmp_path / "kills.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.kill_nights", "--trials", "1", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    record = json.loads(out.read_text()) if out.exists() else {}
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert record["failures"] == 0 and record["trials"] == 30
    ended = {row["point"] + " " + row["signal"]: row["ended"] for row in record["rows"]}
    assert ended["renamed KILL"] == {"killed by SIGKILL": 1}
    assert ended["committed TERM"] == {"interrupted": 1}  # deferred until the promotion was whole


def test_a_full_disk_after_the_commit_still_reports_the_promotion(day_store, tiny_dir, dreamer_home, fake_judge,
                                                                   monkeypatch):
    """The manifest cannot be written, nor the warning stored: the night is promoted all the same,
    says so, and the next start rewrites the manifest."""
    import errno

    from dreamer.morning import stack
    from dreamer.sleep import gate as gate_stage
    from storage import StoreError

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_write(*args, **kwargs):
        raise StoreError("the disk holding dreamer.db is full: nothing was written")

    monkeypatch.setattr(stack, "write_manifest", full)
    monkeypatch.setattr(ledger, "set_report", no_write)
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert outcome.status == "promoted" and "could not be written" in outcome.report
    assert ledger.runs(day_store)[0]["status"] == "promoted" and day_store.unconsolidated_count() == 0
    monkeypatch.undo()
    assert any("rewrote the stack manifest" in r for r in reconcile(day_store, dreamer_home))
