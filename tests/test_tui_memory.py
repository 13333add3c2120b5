"""Hot swap of the memory in a running chat, and the morning report, through App.run_test()."""

from __future__ import annotations

import pytest

import agent.tui.chat_screen as chat_screen
from agent.models import ModelError
from agent.runtime import Adapter, FakeRuntime
from agent.tui import make_app
from agent.tui.report_screen import ReportScreen
from agent.tui.widgets import StatusBar
from storage import ledger
from storage.manifest import write_manifest
from tests.test_tui import SIZE, chat, make_session, record_notifications, say, settle, until


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(chat_screen, "MEMORY_POLL_SECONDS", 0.05)


def manifest(home, version: int, nights: list[int], bad: int | None = None) -> dict:
    data = {"version": version, "night": nights[-1] if nights else 0, "experts": [
        {"night": n, "day": "2026-11-21", "path": str(home / f"night-{n}"),
         "gguf_path": str(home / ("broken" if n == bad else f"night-{n}") / "adapter.gguf"), "scale": 1.0}
        for n in nights]}
    write_manifest(data, home)
    return data


class CountingRuntime(FakeRuntime):
    """FakeRuntime whose load fails, like llama.cpp's, for a file under a 'broken' folder."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loads = 0

    def load_adapters(self, adapters):
        self.loads += 1
        if any("broken" in str(a.path) for a in adapters):
            raise ModelError("llama.cpp could not load the LoRA adapter; the previous memory stays active")
        super().load_adapters(adapters)


def status_text(pilot) -> str:
    return chat(pilot).query_one(StatusBar).text


async def test_a_new_night_swaps_in_between_turns_never_mid_reply(db, tmp_path):
    runtime = CountingRuntime(["one two three four five six seven eight"], delay=0.05)
    app = make_app(make_session(db, runtime))
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: runtime.loads == 1)  # the starting stack (the base alone)
        await say(pilot, "hello")
        await until(pilot, lambda: chat(pilot).generating)
        manifest(tmp_path, 1, [1])  # the sleep promotes night 1 while the reply streams
        await pilot.pause(0.2)
        assert chat(pilot).generating and runtime.adapters == []  # not mid-reply
        await settle(pilot)
        await until(pilot, lambda: runtime.adapters == [Adapter(tmp_path / "night-1" / "adapter.gguf", 1.0)])
        await until(pilot, lambda: ("memory updated: night 1", "information") in seen)
        assert "memory: night 1" in status_text(pilot)
        await pilot.pause(0.2)
        assert runtime.loads == 2  # an unchanged manifest is not loaded again


async def test_a_stack_that_fails_to_load_keeps_the_old_one_and_says_why(db, tmp_path):
    manifest(tmp_path, 1, [1])
    runtime = CountingRuntime()
    app = make_app(make_session(db, runtime))
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: runtime.adapters and "memory: night 1" in status_text(pilot))
        manifest(tmp_path, 2, [1, 2], bad=2)
        await until(pilot, lambda: any("could not be loaded" in m and s == "error" for m, s in seen))
        message = next(m for m, _ in seen if "could not be loaded" in m)
        assert "memory version 2" in message and "still using night 1" in message
        assert [a.path.parent.name for a in runtime.adapters] == ["night-1"]
        assert "memory: night 1" in status_text(pilot)
        loads = runtime.loads
        await pilot.pause(0.3)
        assert runtime.loads == loads  # told once, not retried every poll
        await say(pilot, "still there?")
        await settle(pilot)
        assert db.messages(chat(pilot).session.conversation_id)[-1]["content"] == "You said: still there?"


async def test_rollback_swaps_back(db, tmp_path):
    manifest(tmp_path, 2, [1, 2])
    runtime = CountingRuntime()
    app = make_app(make_session(db, runtime))
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(runtime.adapters) == 2)
        manifest(tmp_path, 1, [1])  # what `dreamer rollback` writes
        await until(pilot, lambda: len(runtime.adapters) == 1)
        await until(pilot, lambda: ("memory rolled back: night 1", "information") in seen)
        manifest(tmp_path, 0, [])
        await until(pilot, lambda: runtime.adapters == [])
        await until(pilot, lambda: ("memory rolled back: the base alone", "information") in seen)
        assert "memory: none yet" in status_text(pilot)


async def test_a_folded_memory_swaps_the_model_between_replies_and_back(db, tmp_path):
    """Deep sleep: the manifest serves one folded GGUF; the chat swaps models, not adapters, never
    mid-reply; a fold that will not load keeps the old memory and says so; a fold made from another
    chat model is not used (its adapters are applied instead)."""
    manifest(tmp_path, 1, [1])
    runtime = CountingRuntime(["one two three four five six seven eight"], delay=0.05)
    app = make_app(make_session(db, runtime))
    seen = record_notifications(app)

    def folded(version, nights, source="fake.gguf", name="stack-a.gguf", kind="Q8_0"):
        data = manifest(tmp_path, version, nights)
        data["served"] = {"model": str(tmp_path / name), "source": source, "type": kind, "adapters": []}
        write_manifest(data, tmp_path)

    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(runtime.adapters) == 1)
        await say(pilot, "hello")
        await until(pilot, lambda: chat(pilot).generating)
        folded(2, [1, 2])
        await pilot.pause(0.2)
        assert chat(pilot).generating and runtime.model_path == runtime.base_path  # not mid-reply
        await settle(pilot)
        await until(pilot, lambda: runtime.model_path == tmp_path / "stack-a.gguf" and runtime.adapters == [])
        await until(pilot, lambda: ("memory updated: night 2", "information") in seen)
        folded(2, [1, 2], kind="grid")  # the same experts folded again in another type: another model
        await until(pilot, lambda: seen.count(("memory updated: night 2", "information")) == 2)
        runtime.fail_model_with = "llama.cpp could not load stack-b.gguf"
        folded(3, [1, 2, 3], name="stack-b.gguf")
        await until(pilot, lambda: any("could not be loaded" in m for m, _ in seen))
        assert runtime.model_path == tmp_path / "stack-a.gguf"  # the old memory serves on
        folded(4, [1, 2, 3], source="another.gguf", name="stack-c.gguf")
        await until(pilot, lambda: len(runtime.adapters) == 3)
        assert runtime.model_path == runtime.base_path
        await until(pilot, lambda: any("folded model was made from another.gguf" in m for m, _ in seen))  # said
        manifest(tmp_path, 0, [])  # rolled back to the base alone
        await until(pilot, lambda: runtime.adapters == [] and "memory: none yet" in status_text(pilot))


async def test_an_expert_without_gguf_is_named(db, tmp_path):
    data = manifest(tmp_path, 1, [1])
    data["experts"][0]["gguf_path"] = None
    write_manifest(data, tmp_path)
    runtime = CountingRuntime()
    app = make_app(make_session(db, runtime))
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("dreamer memory --export" in m for m, _ in seen))
        assert runtime.adapters == []
        await pilot.pause(0.3)  # several polls later: said once, not at every poll
        assert sum("dreamer memory --export" in m for m, _ in seen) == 1


async def test_the_morning_report_is_shown_once(db):
    run = ledger.start_run(db, "2026-11-21", "cpu-tiny")
    ledger.finish_run(db, run, "promoted", report="# Morning report: night 1\n\n**PROMOTED**")
    app = make_app(make_session(db))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(pilot.app.screen, ReportScreen))
        assert "Morning report: night 1" in pilot.app.screen.report
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(pilot.app.screen, ReportScreen))
        chat(pilot)  # back on the chat
    assert db.unseen_report() is None
    app = make_app(make_session(db))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        chat(pilot)  # no report the second time
