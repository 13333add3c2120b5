"""`dreamer forget`: the turns leave the database, its index, the exports and the logs; the nights
that learned them leave the memory (SISA-style: dropped and their other turns re-queued)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dreamer.cli.main import cli
from storage import Store, ledger
from storage.manifest import read_manifest
from storage.paths import database_path
from tests.test_fold import _promote


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


def two_nights(store, tiny_dir, home, judge, monkeypatch):
    (home / "config.toml").write_text(f'train_model = "{tiny_dir}"\nmodel = "{tiny_dir / "model.gguf"}"\n')
    _promote(store, tiny_dir, home, judge, monkeypatch, "My sister Ana lives in Lisbon and works as a pilot.")
    _promote(store, tiny_dir, home, judge, monkeypatch, "My cat is called Miso and she hates the vet.")
    return [c["id"] for c in sorted(store.conversations(), key=lambda c: c["id"])]


def everything(store) -> dict:
    return {table: list(store.db[table].rows) for table in ("messages", "conversations", "adapters", "probes",
                                                            "stack_versions", "sleep_runs")}


def test_turns_no_night_learned_go_alone(store):
    keep, gone = store.new_conversation(), store.new_conversation()
    store.add_message(keep, "user", "My sister Ana lives in Lisbon.")
    store.add_message(gone, "user", "My bank PIN is hidden under the blue vase.")
    result = run("forget", str(gone), "--yes")
    assert result.exit_code == 0, result.output
    assert "No night learned from them yet" in result.output and "forgotten: 1 message;" in result.output
    fresh = Store(database_path())
    assert [c["id"] for c in fresh.conversations()] == [keep]
    assert fresh.search_day(None, "blue vase PIN") == []  # the full-text index forgot it too
    assert fresh.search_day(None, "Lisbon sister") != []


def test_a_forgotten_conversation_takes_its_night_and_every_night_trained_on_it(
        store, tiny_dir, dreamer_home, fake_judge, monkeypatch, tmp_path):
    first, second = two_nights(store, tiny_dir, dreamer_home, fake_judge, monkeypatch)
    folders = [Path(r["path"]) for r in ledger.adapters(store, "active")]
    logs = dreamer_home / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "errors.log").write_text("kept line\nValueError: My sister Ana lives in Lisbon and works as a pilot.\n")
    (logs / "sleep-20261121-030000.log").write_text("Morning report: night 2 ... Lisbon\n")
    result = run("forget", str(first), input="y\n")
    assert result.exit_code == 0, result.output
    assert "night(s) 1, 2 goes with them" in result.output  # night 2 trained with night 1 active
    assert "forgotten: 1 message, nights 1, 2; the chat now serves the base model" in result.output
    assert "waiting for the next sleep: 1 message" in result.output  # the cat: learned again tonight
    fresh = Store(database_path())
    assert not any(f.exists() for f in folders)
    assert {r["status"] for r in ledger.adapters(fresh)} == {"forgotten"}
    assert ledger.active_version(fresh) == 3 and read_manifest(dreamer_home)["experts"] == []
    assert read_manifest(dreamer_home)["served"]["model"] is None
    assert not list((dreamer_home / "adapters" / "served").glob("*.gguf"))
    assert list(fresh.db["probes"].rows) == []  # replay would bring the facts back
    assert all("Lisbon" not in (r["report"] or "") and r["metrics"] == "{}" for r in fresh.db["sleep_runs"].rows)
    assert (logs / "errors.log").read_text() == "kept line\n" and not (logs / "sleep-20261121-030000.log").exists()
    assert run("export", str(tmp_path / "all.jsonl")).exit_code == 0
    assert "Lisbon" not in (tmp_path / "all.jsonl").read_text() and "Miso" in (tmp_path / "all.jsonl").read_text()
    refused = run("rollback", "2")
    assert refused.exit_code == 1 and "night 1, which was forgotten" in refused.output
    # The next night learns the cat again, from its own conversation alone.
    outcome = _promote(fresh, tiny_dir, dreamer_home, fake_judge, monkeypatch, "I play water polo on Tuesdays.")
    [night] = ledger.adapters(fresh, "active")
    assert night["night"] == 3 and outcome.status == "promoted"
    learned = json.loads((Path(night["path"]) / "metadata.json").read_text())["conversation_ids"]
    assert first not in learned and second in learned


def test_forgetting_the_last_night_keeps_the_one_before(store, tiny_dir, dreamer_home, fake_judge, monkeypatch):
    first, second = two_nights(store, tiny_dir, dreamer_home, fake_judge, monkeypatch)
    result = run("forget", "--search", "cat Miso", "--yes")
    assert result.exit_code == 0, result.output
    fresh = Store(database_path())
    assert [r["night"] for r in ledger.adapters(fresh, "active")] == [1]
    served = read_manifest(dreamer_home)["served"]
    assert served["model"] and "run-0001" in Path(served["model"]).read_bytes()[:4096].decode("latin-1")
    assert [c["id"] for c in fresh.conversations()] == [first]


def test_a_copied_home_never_deletes_the_original_homes_experts(store, tiny_dir, dreamer_home, fake_judge,
                                                                 monkeypatch, tmp_path):
    import shutil

    first, _ = two_nights(store, tiny_dir, dreamer_home, fake_judge, monkeypatch)
    originals = [Path(r["path"]) for r in ledger.adapters(store, "active")]
    copy = tmp_path / "copy"
    shutil.copytree(dreamer_home, copy)  # its database names the original's folders, by absolute path
    monkeypatch.setenv("DREAMER_HOME", str(copy))
    from storage import Store

    copied = Store(copy / "dreamer.db")
    # the copy reads its own experts, never the original's
    assert [Path(r["path"]) for r in ledger.adapters(copied, "active")] == [copy / "adapters" / p.name for p in originals]
    assert all(str(copy) in r["path"] and str(copy) in r["gguf_path"] for r in copied.active_adapters())
    copied.close()
    assert run("forget", str(first), "--yes").exit_code == 0
    assert all(p.is_dir() for p in originals)
    assert not (copy / "adapters" / "served").exists() or not list((copy / "adapters" / "served").glob("*.gguf"))


def test_what_does_not_exist_or_a_running_sleep_changes_nothing(store, tiny_dir, dreamer_home, fake_judge,
                                                                 monkeypatch):
    from storage.locks import pid_lock

    two_nights(store, tiny_dir, dreamer_home, fake_judge, monkeypatch)
    before = everything(store)
    for args, message in ((["99"], "no conversation with id 99"), (["--day", "2020-01-01"], "nothing was said on"),
                          (["--search", "zebra"], "no turn matches"), ([], "name one thing to forget")):
        result = run("forget", *args, "--yes")
        assert result.exit_code == 1 and message in result.output, result.output
    assert run("forget", "1", input="n\n").exit_code == 1  # not confirmed
    with pid_lock(dreamer_home / "sleep.lock", lambda pid: RuntimeError(pid)):
        import os

        if os.fork() == 0:  # another process, as a sleep is
            code = run("forget", "1", "--yes").exit_code
            os._exit(3 if code == 1 else 0)
        _, status = os.wait()
        assert os.WEXITSTATUS(status) == 3
    assert everything(Store(database_path())) == before


def test_a_forget_killed_after_its_commit_is_finished_at_the_next_start(store, tiny_dir, dreamer_home, fake_judge,
                                                                        monkeypatch):
    import shutil

    first, _ = two_nights(store, tiny_dir, dreamer_home, fake_judge, monkeypatch)
    folders = [Path(r["path"]) for r in ledger.adapters(store, "active")]
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(SystemExit(9)))
        assert run("forget", str(first), "--yes").exit_code == 9  # "killed" right after the commit
    assert all(f.exists() for f in folders)
    status = run("status")
    assert status.exit_code == 0 and "a forgotten night's expert" in status.output
    assert not any(f.exists() for f in folders)
    assert read_manifest(dreamer_home)["experts"] == []
    assert not list((dreamer_home / "adapters" / "served").glob("*.gguf"))  # the folds held them too


# --- from the chat: Ctrl+F, with a confirmation ----------------------------------------------------------------
async def test_the_chat_forgets_the_open_conversation_after_asking(db):
    from agent.tui import make_app
    from agent.tui.forget_screen import ForgetScreen
    from tests.test_tui import SIZE, chat, make_session, record_notifications, settle, say

    app = make_app(make_session(db))
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await say(pilot, "My sister Ana lives in Lisbon.")
        await settle(pilot)
        kept = chat(pilot).session.conversation_id
        await pilot.press("ctrl+n")
        await say(pilot, "My bank PIN is under the blue vase.")
        await settle(pilot)
        secret = chat(pilot).session.conversation_id
        await pilot.press("ctrl+f")
        await pilot.pause()
        assert isinstance(app.screen, ForgetScreen)
        await pilot.press("n")  # kept: nothing changes
        await pilot.pause()
        assert [c["id"] for c in db.conversations()] == [secret, kept]
        await pilot.press("ctrl+f")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
        assert [c["id"] for c in db.conversations()] == [kept]
        assert db.search_day(None, "blue vase PIN") == []
        assert chat(pilot).session.conversation_id == kept
        assert any(m.startswith("forgotten: 2 messages") for m, _ in seen)
