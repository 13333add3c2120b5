import json
import subprocess
import sys

from click.testing import CliRunner

from dreamer.cli.main import cli
from storage import Store
from storage.paths import database_path


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("chat", "status", "log", "import", "export", "forget"):
        assert command in result.output
    assert "..." not in result.output.split("Commands:")[1]  # every first sentence whole, wrapped, never cut
    assert "--facts: what it knows." in result.output and "dont-learn" in result.output


def test_help_imports_no_heavy_modules():
    code = (
        "import sys; from dreamer.cli.main import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'textual') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_import_status_log_export(tmp_path, dreamer_home):
    source = tmp_path / "in.jsonl"
    record = {"day": "2026-11-20", "title": "pets", "messages": [
        {"role": "user", "content": "My cat is called Miso."}, {"role": "assistant", "content": "Hello Miso!"}]}
    source.write_text(json.dumps(record) + "\n")
    result = run("import", str(source))
    assert result.exit_code == 0, result.output
    assert "imported 1 conversation from" in result.output

    status = run("status")
    assert status.exit_code == 0, status.output
    assert str(dreamer_home) in status.output
    assert "2026-11-20         2                  2" in status.output
    assert "waiting for the next sleep: 2 messages" in status.output
    assert "memory:   none yet" in status.output

    log = run("log", "--day", "2026-11-20")
    assert "user: My cat is called Miso." in log.output
    assert "pets" in log.output
    assert "no conversations on 2026-11-21" in run("log", "--day", "2026-11-21").output

    out = tmp_path / "out.jsonl"
    assert run("export", str(out)).exit_code == 0
    assert json.loads(out.read_text()) == record

    assert "    1 user: My cat is called Miso." in run("log", "--ids").output
    assert run("dont-learn", "--turn", "1").exit_code == 0
    log = run("log").output
    assert "user [don't learn]: My cat is called Miso." in log
    assert "assistant [don't learn]: Hello Miso!" in log  # the reply answering it goes along
    assert "waiting for the next sleep: 0 messages" in run("status").output


def test_bad_import_is_one_clean_error(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"day": "2026-11-20", "messages": [{"role": "user", "content": "ok"}]}\n{oops\n')
    result = run("import", str(source))
    assert result.exit_code == 1
    assert "line 2: invalid JSON" in result.output
    assert "Traceback" not in result.output
    assert Store(database_path()).db["messages"].count == 0


def test_bad_day_and_bad_config_are_named(dreamer_home):
    result = run("log", "--day", "yesterday")
    assert result.exit_code == 1 and "day must be YYYY-MM-DD, got 'yesterday'" in result.output
    dreamer_home.mkdir(parents=True, exist_ok=True)
    (dreamer_home / "config.toml").write_text('temprature = 0.5\n')
    result = run("status")
    assert result.exit_code == 1 and "unknown key 'temprature'" in result.output


def test_missing_model_is_named_with_the_fix(dreamer_home, tmp_path):
    dreamer_home.mkdir(parents=True, exist_ok=True)
    (dreamer_home / "config.toml").write_text(f'model = "{tmp_path}/missing.gguf"\n')
    result = run("chat")
    assert result.exit_code == 1
    assert "model file not found" in result.output and "missing.gguf" in result.output
    assert "config.toml" in result.output
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a model")
    (dreamer_home / "config.toml").write_text(f'model = "{not_gguf}"\n')
    result = run("chat")
    assert result.exit_code == 1 and "is not a GGUF file" in result.output


def test_sleep_with_nothing_to_consolidate_exits_0():
    result = run("sleep", "--now")
    assert result.exit_code == 0, result.output
    assert "nothing to consolidate" in result.output


def test_sleep_dry_run_trains_nothing(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"day": "2026-11-20", "messages": [{"role": "user", "content": "I love kites."}]}) + "\n")
    run("import", str(source))
    result = run("sleep", "--now", "--dry-run", "--day", "2026-11-20")
    assert result.exit_code == 0, result.output
    assert "would consolidate 2026-11-20" in result.output and "nothing trained" in result.output
    assert "Dreaming off" in result.output  # the presets leave it off until it is measured
    assert "none yet" in run("memory").output
    result = run("sleep", "--now", "--dry-run", "--dreaming")
    assert result.exit_code == 0 and "Dreaming on: 48 dreams written, 8 scored" in result.output, result.output


def test_dreaming_in_config_toml_and_on_the_command_line(tmp_path, dreamer_home):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"day": "2026-11-20", "messages": [{"role": "user", "content": "I love kites."}]}) + "\n")
    run("import", str(source))
    (dreamer_home / "config.toml").write_text('dreaming = "on"\n')
    assert "Dreaming on" in run("sleep", "--now", "--dry-run").output
    assert "Dreaming off" in run("sleep", "--now", "--dry-run", "--no-dreaming").output
    (dreamer_home / "config.toml").write_text('dreaming = "sometimes"\n')
    result = run("sleep", "--now", "--dry-run")
    assert result.exit_code == 1 and "dreaming must be preset, on or off, got 'sometimes'" in result.output


def test_sleep_bad_preset_and_bad_probes_are_named(tmp_path):
    result = run("sleep", "--now", "--preset", "gpu-huge")
    assert result.exit_code == 1 and "unknown preset 'gpu-huge'" in result.output and "cpu-tiny" in result.output
    custom = tmp_path / "mine.toml"
    custom.write_text("[distill]\nlmbda = 2\n")
    result = run("sleep", "--now", "--preset", str(custom))
    assert result.exit_code == 1 and "distill.lmbda must be in [0, 1]" in result.output
    probes = tmp_path / "p.jsonl"
    probes.write_text('{"day": "2026-11-20", "question": "Q?", "answer": "A", "distractors": ["A"]}\n')
    result = run("eval", "--probes", str(probes))
    assert result.exit_code == 1 and "line 1: the answer is also listed as a distractor" in result.output


def test_memory_lists_runs(dreamer_home):
    from storage import ledger

    store = Store(database_path())
    run_id = ledger.start_run(store, "2026-11-20", "cpu-tiny")
    ledger.finish_run(store, run_id, "rejected", reason="today's recall did not improve enough")
    output = run("memory").output
    assert "rejected" in output and "did not improve" in output and "cpu-tiny" in output


def test_rollback_rewrites_the_manifest_and_requeues_turns(dreamer_home):
    from storage import ledger
    from storage.manifest import read_manifest
    from tests.test_versions import promote_night

    store = Store(database_path())
    for night in (1, 2):
        promote_night(store, night)
    from dreamer.morning.stack import write_manifest

    write_manifest(store, dreamer_home / "adapters")
    assert read_manifest(dreamer_home)["version"] == 2
    output = run("memory").output
    assert "* v2    nights 1, 2" in output and "  v1    nights 1" in output
    # the experts' files are missing (these rows were made by hand): named, with the way out
    assert "DAMAGED: its folder /x/night-2 is missing" in output and "`dreamer rollback 1`" in output

    result = run("rollback")
    assert result.exit_code == 0, result.output
    assert "stack v1 (nights: 1)" in result.output and "waiting for the next sleep: 1 message" in result.output
    assert "could not be folded" in result.output  # its files are missing: said, and the rollback goes on
    manifest = read_manifest(dreamer_home)
    assert manifest["version"] == 1 and [e["night"] for e in manifest["experts"]] == [1]
    assert run("rollback", "0").exit_code == 0 and read_manifest(dreamer_home)["experts"] == []
    result = run("rollback")
    assert result.exit_code == 1 and "already the base alone" in result.output
    result = run("rollback", "9")
    assert result.exit_code == 1 and "no stack version 9" in result.output
    assert ledger.active_version(store) == 0


def test_rollback_waits_for_no_sleep(dreamer_home):
    from dreamer.sleep.lock import sleep_lock
    from tests.test_versions import promote_night

    promote_night(Store(database_path()), 1)
    with sleep_lock(dreamer_home):
        result = run("rollback", "0")
    assert result.exit_code == 1 and "another sleep is already running" in result.output


def test_new_commands_turn_config_errors_into_one_line(dreamer_home):
    dreamer_home.mkdir(parents=True, exist_ok=True)
    (dreamer_home / "config.toml").write_text('sleep_time = "25:00"\n')
    for command in (["schedule"], ["rollback"], ["memory"], ["daemon"]):
        result = run(*command)
        assert result.exit_code == 1, command
        assert "sleep_time must be HH:MM" in result.output and "Traceback" not in result.output
