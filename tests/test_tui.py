"""The Textual chat UI, driven headless with `run_test()` against a real Store and FakeRuntime."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from textual.widgets import Input

from agent.runtime import FakeRuntime
from agent.session import ChatSession
from agent.tui import ChatScreen, HelpScreen, make_app
from agent.tui.widgets import INTERRUPTED_MARK, ConversationList, MessageView, StatusBar
from storage import Config, Store, StoreError

SIZE = (110, 32)
LONG_REPLY = " ".join(f"word{i}" for i in range(80))


def make_session(db: Store, runtime: FakeRuntime | None = None, first_run: bool = False) -> ChatSession:
    if not first_run:  # the first-run card would cover the chat: tests of the card ask for it
        db.set_state("first_run_seen", "test")
    return ChatSession(db, runtime or FakeRuntime(), Config())


def record_notifications(app) -> list[tuple[str, str]]:
    """(message, severity) of every notification, recorded as it is raised."""
    seen: list[tuple[str, str]] = []
    original = app.notify

    def notify(message, **kwargs):
        seen.append((str(message), kwargs.get("severity", "information")))
        return original(message, **kwargs)

    app.notify = notify
    return seen


async def until(pilot, predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.01)


async def settle(pilot) -> None:
    """Wait until no reply is being generated and the UI has caught up."""
    await pilot.pause()
    await until(pilot, lambda: not chat(pilot).generating)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def chat(pilot) -> ChatScreen:
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    return screen


def bubbles(pilot) -> list[MessageView]:
    return list(chat(pilot).query(MessageView))


async def say(pilot, text: str) -> None:
    await pilot.click("#prompt")
    chat(pilot).query_one("#prompt", Input).value = text
    await pilot.press("enter")


async def test_send_streams_reply_and_persists_both_turns(db):
    runtime = FakeRuntime(["Hello **there**, friend."])
    session = make_session(db, runtime)
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"hi dreamer")
        assert chat(pilot).query_one("#prompt", Input).value == "hi dreamer"
        await pilot.press("enter")
        await settle(pilot)

        rows = db.messages(session.conversation_id)
        assert [(r["role"], r["content"], r["status"]) for r in rows] == [
            ("user", "hi dreamer", "complete"),
            ("assistant", "Hello **there**, friend.", "complete"),
        ]
        shown = bubbles(pilot)
        assert [(b.role, b.text) for b in shown] == [("user", "hi dreamer"), ("assistant", "Hello **there**, friend.")]
        assert shown[1].query_one("Markdown").source == "Hello **there**, friend."
        assert not shown[1].interrupted
        assert chat(pilot).query_one("#prompt", Input).value == ""
        # the model saw the stored user turn
        assert runtime.prompts[-1][-1] == {"role": "user", "content": "hi dreamer"}


async def test_markdown_reply_streams_in_pieces_and_ends_complete(db, monkeypatch):
    text = "Two things:\n\n- **first** point\n- second point\n\nThat is all for now."
    chunks: list[str] = []
    original_append = MessageView.append

    def recording_append(self, chunk):
        chunks.append(chunk)
        return original_append(self, chunk)

    monkeypatch.setattr(MessageView, "append", recording_append)
    session = make_session(db, FakeRuntime([text], delay=0.03))  # every word >= 30 ms
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        await say(pilot, "list please")
        await settle(pilot)
        # rendered in several batches (the first word at once), not one update at the end
        assert chunks[0] == "Two" and len(chunks) >= 3 and "".join(chunks) == text
        bubble = bubbles(pilot)[1]
        markdown = bubble.query_one("Markdown")
        assert bubble.text == markdown.source == text == db.messages(session.conversation_id)[-1]["content"]
        assert len(markdown.query("MarkdownBulletList MarkdownBullet")) == 2
        assert not bubble.query_one(".mark").display


async def test_empty_message_is_refused_and_nothing_stored(db):
    app = make_app(make_session(db))
    async with app.run_test(size=SIZE) as pilot:
        seen = record_notifications(app)
        await say(pilot, "   ")
        await pilot.pause()
        assert any(severity == "warning" and "empty" in msg for msg, severity in seen)
        assert bubbles(pilot) == []
        assert db.db["messages"].count == 0
        assert not chat(pilot).generating


async def test_escape_stops_generation_and_keeps_partial_reply(db):
    runtime = FakeRuntime([LONG_REPLY], delay=0.03)
    session = make_session(db, runtime)
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        await say(pilot, "tell me a long story")
        await until(pilot, lambda: len(bubbles(pilot)) == 2 and bubbles(pilot)[1].text.count("word") >= 3)
        await pilot.press("escape")
        await settle(pilot)

        reply = db.messages(session.conversation_id)[-1]
        assert reply["role"] == "assistant" and reply["status"] == "interrupted"
        assert reply["content"].startswith("word0 word1")
        assert len(reply["content"]) < len(LONG_REPLY)
        bubble = bubbles(pilot)[1]
        assert bubble.interrupted and bubble.text == reply["content"]
        mark = bubble.query_one(".mark")
        assert mark.display and INTERRUPTED_MARK in str(mark.render())


async def test_second_send_while_generating_is_refused_and_text_kept(db):
    session = make_session(db, FakeRuntime([LONG_REPLY], delay=0.03))
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        seen = record_notifications(app)
        await say(pilot, "first")
        await until(pilot, lambda: chat(pilot).generating)
        await say(pilot, "second")
        await pilot.pause()
        assert any(severity == "warning" and "still replying" in msg for msg, severity in seen)
        assert chat(pilot).query_one("#prompt", Input).value == "second"
        await pilot.press("escape")
        await settle(pilot)
        assert [r["content"] for r in db.messages(session.conversation_id) if r["role"] == "user"] == ["first"]


async def test_model_error_is_notified_and_input_stays_usable(db):
    runtime = FakeRuntime()
    runtime.fail_with = "boom"
    session = make_session(db, runtime)
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        seen = record_notifications(app)
        await say(pilot, "hello")
        await settle(pilot)
        assert ("model error: boom", "error") in seen
        assert app.is_running
        rows = db.messages(session.conversation_id)
        assert [(r["role"], r["content"]) for r in rows] == [("user", "hello")]  # no empty failed reply
        assert bubbles(pilot)[-1].role == "user"

        await say(pilot, "again")  # the next turn works
        await settle(pilot)
        assert db.messages(session.conversation_id)[-1]["content"] == "You said: again"
        assert bubbles(pilot)[-1].text == "You said: again"


@pytest.mark.parametrize("failure", [StoreError("database is locked"), sqlite3.OperationalError("database is locked")])
async def test_failed_send_keeps_the_typed_text(db, failure, monkeypatch):
    session = make_session(db)
    app = make_app(session)

    def broken_send(text):
        raise failure

    monkeypatch.setattr(session, "send", broken_send)
    async with app.run_test(size=SIZE) as pilot:
        seen = record_notifications(app)
        await say(pilot, "do not lose me")
        await pilot.pause()
        assert any(severity == "error" and "database is locked" in msg for msg, severity in seen)
        assert chat(pilot).query_one("#prompt", Input).value == "do not lose me"
        assert bubbles(pilot) == [] and not chat(pilot).generating
        assert app.is_running
        assert db.db["messages"].count == 0


async def test_new_conversation_and_switch_back(db):
    session = make_session(db)
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        await say(pilot, "first topic")
        await settle(pilot)
        first = session.conversation_id

        await pilot.press("ctrl+n")
        await pilot.pause()
        assert session.conversation_id != first and bubbles(pilot) == []
        await say(pilot, "second topic")
        await settle(pilot)
        second = session.conversation_id
        assert [b.text for b in bubbles(pilot)] == ["second topic", "You said: second topic"]

        # ctrl+n on a conversation that is still empty reuses it instead of piling up empties
        await pilot.press("ctrl+n")
        await pilot.pause()
        empty = session.conversation_id
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert session.conversation_id == empty

        listing = chat(pilot).query_one(ConversationList)
        listing.focus()
        listing.highlighted = listing.get_option_index(str(first))
        await pilot.press("enter")
        await until(pilot, lambda: session.conversation_id == first and len(bubbles(pilot)) == 2)
        assert [b.text for b in bubbles(pilot)] == ["first topic", "You said: first topic"]
        assert second != first


async def test_history_is_shown_with_interrupted_mark(db):
    conversation = db.new_conversation()
    db.add_message(conversation, "user", "old question")
    db.add_message(conversation, "assistant", "half an ans", status="interrupted")
    app = make_app(make_session(db))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        shown = bubbles(pilot)
        assert [(b.role, b.text, b.interrupted) for b in shown] == [
            ("user", "old question", False),
            ("assistant", "half an ans", True),
        ]
        assert shown[0].has_class("user") and shown[1].has_class("assistant")


async def test_help_opens_and_closes(db):
    app = make_app(make_session(db))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)

        chat(pilot).query_one(ConversationList).focus()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, ChatScreen)

        # in the empty message box `?` shows the keys; once the box holds text it is text
        chat(pilot).query_one("#prompt", Input).focus()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("w", "h", "y", "question_mark")
        assert isinstance(app.screen, ChatScreen)
        assert chat(pilot).query_one("#prompt", Input).value == "why?"


async def test_status_bar_shows_memory_and_unconsolidated(db):
    app = make_app(make_session(db))
    async with app.run_test(size=SIZE) as pilot:
        status = chat(pilot).query_one(StatusBar)
        assert "model: fake" in status.text
        assert "memory: none yet" in status.text
        assert "waiting for sleep: 0 messages" in status.text
        assert "last sleep: never" in status.text
        assert f"day: {db.today()}" in status.text
        await say(pilot, "count me")
        await settle(pilot)
        assert "waiting for sleep: 2 messages" in status.text
        assert "waiting for sleep: 2 messages" in str(status.render())
        for columns in (100, 80):  # narrower than the long form: a short form that fits, memory and count kept
            await pilot.resize_terminal(columns, 24)
            await pilot.pause()
            shown = str(status.render())
            assert shown == "none yet │ 2 waiting │ last sleep: never" and len(shown) <= status.content_size.width
        await pilot.resize_terminal(40, 24)
        await pilot.pause()
        assert str(status.render()) == "none yet │ 2 waiting"


async def test_quit_mid_reply_stops_the_worker(db):
    session = make_session(db, FakeRuntime([LONG_REPLY], delay=0.03))
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        await say(pilot, "go on")
        await until(pilot, lambda: bool(bubbles(pilot)) and bubbles(pilot)[-1].text != "")
        await pilot.press("ctrl+q")
    await asyncio.sleep(0.1)
    reply = db.messages(session.conversation_id)[-1]
    assert reply["status"] == "interrupted" and len(reply["content"]) < len(LONG_REPLY)


async def test_the_first_run_card_shows_once(db):
    from agent.tui.report_screen import ReportScreen

    app = make_app(make_session(db, first_run=True))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ReportScreen))
        card = app.screen.report
        assert "At night dreamer sleeps" in card and "F2" in card and "embedded" in card and "03:00" in card
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen))
    assert db.state("first_run_seen") is not None
    app = make_app(make_session(db, first_run=True))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        assert isinstance(app.screen, ChatScreen)  # seen: not again


async def test_ctrl_b_hides_and_shows_the_conversation_list(db):
    app = make_app(make_session(db))
    async with app.run_test(size=SIZE) as pilot:
        listing = chat(pilot).query_one(ConversationList)
        assert listing.display
        await pilot.press("ctrl+b")
        assert not listing.display
        await pilot.press("ctrl+b")
        assert listing.display
