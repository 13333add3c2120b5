"""The command line's one error path, and a home that is read-only, full, or damaged.

Bad input or a known state: one clean line naming it, exit 1, nothing lost, the traceback in
logs/errors.log. A read-only home still shows its data (`status`, `log`, `export`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamer.cli.main import cli
from storage import Store, ledger
from storage.paths import database_path

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(cli, list(args))


def dreamer(home: Path, *args, stdin=None, shell_tail: str = "") -> subprocess.CompletedProcess:
    """`python -m dreamer ARGS` in its own process (optionally piped into `shell_tail`)."""
    command = " ".join([sys.executable, "-m", "dreamer", *args]) + shell_tail
    return subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DREAMER_HOME": str(home)})


def test_a_fault_is_one_line_and_its_traceback_is_logged(dreamer_home, monkeypatch):
    import storage.store

    def broken(self):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(storage.store.Store, "day_counts", broken)
    result = run("status")
    assert result.exit_code == 1
    [line] = [text for text in result.output.splitlines() if text.startswith("Error:")]
    assert "ZeroDivisionError: a bug deep inside" in line and "logs/errors.log" in line
    assert "Traceback" not in result.output
    logged = (dreamer_home / "logs" / "errors.log").read_text()
    assert "Traceback" in logged and "def broken" in logged or "broken" in logged
    assert stat.S_IMODE(os.stat(dreamer_home / "logs" / "errors.log").st_mode) == 0o600


def test_a_failed_sleep_leaves_its_traceback(dreamer_home, monkeypatch):
    """A nightly run that fails must leave its traceback somewhere: logs/errors.log."""
    import dreamer.sleep.night

    def failing(*args, **kwargs):
        raise RuntimeError("the teacher fell over")

    monkeypatch.setattr(dreamer.sleep.night, "sleep_now", failing)
    result = run("sleep", "--now")
    assert result.exit_code == 1 and "the teacher fell over" in result.output and "Traceback" not in result.output
    assert "RuntimeError: the teacher fell over" in (dreamer_home / "logs" / "errors.log").read_text()


def test_bad_input_is_named_without_a_log_pointer(dreamer_home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    result = run("import", str(bad))
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad}, line 1: JSON nested too deeply"


def test_a_closed_pipe_is_not_an_error(dreamer_home, tmp_path):
    source = tmp_path / "many.jsonl"
    record = {"day": "2026-11-20", "messages": [{"role": "user", "content": "a fairly long line of chat " * 20}]}
    source.write_text((json.dumps(record) + "\n") * 400)
    assert dreamer(dreamer_home, "import", str(source)).returncode == 0
    result = dreamer(dreamer_home, "log", shell_tail=" | head -n 1")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("# 2026-11-20")


def _read_only_mount(path: Path):
    """A command prefix under which `path` is on a read-only mount, or None where none can be made."""
    if os.geteuid() != 0:
        return None  # then chmod makes it read-only for this user: see below
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {path} {path}"],
                           capture_output=True)
    return "unshare -m sh -c " if probe.returncode == 0 else None


def test_a_read_only_home_still_shows_and_exports_its_data(dreamer_home, tmp_path):
    store = Store(database_path())
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "My cat is called Miso.")
    store.close()
    out = tmp_path / "backup"
    out.mkdir()
    prefix = _read_only_mount(dreamer_home)
    if prefix is None and os.geteuid() == 0:
        pytest.skip("running as root without mount namespaces: no way to make a read-only home here")
    commands = {"status": ["status"], "log": ["log"], "export": ["export", str(out / "b.jsonl")],
                "import": ["import", str(out / "b.jsonl")]}
    results = {}
    for name, args in commands.items():
        line = " ".join([sys.executable, "-m", "dreamer", *args])
        if prefix:
            script = f"mount --bind -o ro {dreamer_home} {dreamer_home} && {line}"
            command = f"{prefix}{json.dumps(script)}"
        else:
            os.chmod(dreamer_home, 0o500)
            command = line
        try:
            results[name] = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True,
                                           timeout=120, env={**os.environ, "DREAMER_HOME": str(dreamer_home)})
        finally:
            os.chmod(dreamer_home, 0o700)
    for name in ("status", "log", "export"):
        assert results[name].returncode == 0, (name, results[name].stderr)
        assert "read-only" in results[name].stderr and "Traceback" not in results[name].stderr
    assert "waiting for the next sleep: 1 message" in results["status"].stdout
    assert "My cat is called Miso." in results["log"].stdout
    assert "Miso" in (out / "b.jsonl").read_text()
    # a write is refused with one line, and nothing is half-done
    assert results["import"].returncode == 1 and results["import"].stderr.count("\n") == 1
    assert "read-only" in results["import"].stderr


def test_a_full_disk_is_one_line_and_loses_nothing(dreamer_home, tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs a tmpfs of a chosen size (root and mount namespaces)")
    store = Store(database_path())
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "My cat is called Miso.")
    store.close()
    big = tmp_path / "big.jsonl"
    record = {"day": "2026-11-20", "messages": [{"role": "user", "content": "x" * 4000}]}
    big.write_text((json.dumps(record) + "\n") * 2000)  # 8 MB of chat into a 2 MB disk
    small = tmp_path / "small"
    small.mkdir()
    line = " ".join([sys.executable, "-m", "dreamer", "import", str(big)])
    script = (f"mount -t tmpfs -o size=2m tmpfs {small} && cp -a {dreamer_home}/. {small}/ && "
              f"DREAMER_HOME={small} {line}; code=$?; cp -a {small}/. {dreamer_home}/; exit $code")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    if "mount" in result.stderr and result.returncode == 32:
        pytest.skip("tmpfs could not be mounted here")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "disk" in result.stderr and "full" in result.stderr, result.stderr
    store = Store(database_path())
    assert [m["content"] for m in store.messages(conversation)] == ["My cat is called Miso."]
    assert store.db["conversations"].count == 1  # the import was all or nothing


def test_a_damaged_expert_is_named_with_the_fix(dreamer_home):
    from tests.test_versions import promote_night

    store = Store(database_path())
    promote_night(store, 1)
    folder = dreamer_home / "adapters" / "run-0001"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "metadata.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # truncated
    (folder / "adapter.gguf").write_bytes(b"GGUF\x03\x00")  # truncated
    with store.write():
        store.db["adapters"].update(1, {"path": str(folder), "gguf_path": str(folder / "adapter.gguf")})
    output = run("memory").output
    assert "DAMAGED" in output and "adapter_model.safetensors" in output and "`dreamer rollback 0`" in output
    result = run("memory", "--export")
    assert result.exit_code == 1 and "night 1's expert is damaged" in result.output
    assert "dreamer rollback 0" in result.output and "Traceback" not in result.output
    probes = dreamer_home / "probes.jsonl"
    probes.write_text(json.dumps({"day": "2026-11-21", "question": "Cat?", "answer": "Miso",
                                  "distractors": ["Rex"]}) + "\n")
    result = run("eval", "--probes", str(probes))
    assert result.exit_code == 1 and "night 1's expert is damaged" in result.output
    # and the next night refuses before any training, with the same line
    store.add_message(store.new_conversation(), "user", "My dog is called Rex.")
    result = run("sleep", "--now")
    assert result.exit_code == 1 and "night 1's expert is damaged" in result.output
    assert ledger.runs(store)[0]["status"] == "promoted"  # no new run was started
