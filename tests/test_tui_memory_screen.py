"""The Memory screen (F2): facts night by night from the cached checks, tonight's queue, "don't learn
this" on a message or its conversation, forgetting from there; and the chat's Ctrl+L and cut replies."""

from __future__ import annotations

from agent.runtime import FakeRuntime
from agent.tui import make_app
from agent.tui.memory_screen import MemoryScreen
from agent.tui.forget_screen import ForgetScreen
from agent.tui.widgets import CUT_MARK, ConversationList
from storage import Config, ledger
from agent.session import ChatSession
from tests.test_tui import SIZE, bubbles, chat, record_notifications, say, settle, until


def one_night(db) -> int:
    """A promoted night 1 that learned one conversation, with two facts checked: one kept, one lost now."""
    learned = db.new_conversation()
    db.add_message(learned, "user", "My parrot is called Bramble and my sister lives in Lisbon.")
    run = ledger.start_run(db, str(db.today()), "cpu-tiny")
    ledger.save_probes(db, run, [
        {"day": str(db.today()), "question": "What is my parrot called?", "answer": "Bramble",
         "distractors": ["Comet", "Pip"], "kind": "recall"},
        {"day": str(db.today()), "question": "Where does my sister live?", "answer": "Lisbon",
         "distractors": ["Porto", "Oslo"], "kind": "recall"}])
    ledger.promote(db, run, {"night": 1, "day": str(db.today()), "path": "/nowhere", "gguf_path": ""},
                   [m["id"] for m in db.messages(learned)],
                   metrics={"dreaming": {"examples": {"rewarded": [
                       {"kind": "application", "request": "Suggest a name for my parrot's new friend.",
                        "reply": "Since Bramble...", "gap": 1.0, "tau_delta": 0.2}], "rejected": []}}})
    [parrot, sister] = ledger.replay_probes(db)
    ledger.save_checks(db, [{"probe_id": parrot["id"], "chosen": "Bramble", "p_answer": 0.9, "correct": True},
                            {"probe_id": sister["id"], "chosen": "Lisbon", "p_answer": 0.8, "correct": True}])
    ledger.save_checks(db, [{"probe_id": sister["id"], "chosen": "Porto", "p_answer": 0.3, "correct": False}])
    return learned


async def test_memory_screen_shows_facts_and_the_queue_and_marks_dont_learn(db):
    learned = one_night(db)
    waiting = db.new_conversation()
    db.add_message(waiting, "user", "My brother Tom moved to Oslo.")
    db.add_message(waiting, "assistant", "Oslo is beautiful in spring.")
    session = ChatSession(db, FakeRuntime(), Config())
    app = make_app(session)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, MemoryScreen))
        screen = app.screen
        facts = str(screen.query_one("#facts").render())
        assert "night 1" in facts and "1 kept, 1 lost" in facts
        assert "What is my parrot called? → Bramble  (90% sure)" in facts
        assert "Where does my sister live? → Lisbon  (says “Porto”, 30% sure)" in facts
        assert "dreamt      Suggest a name for my parrot's new friend. → Since Bramble..." in facts
        assert [m["content"] for m in screen.queue] == ["My brother Tom moved to Oslo.", "Oslo is beautiful in spring."]

        screen.query_one("#queue").focus()
        await pilot.press("d")  # the highlighted (first) message: the user's turn, and the reply answering it
        await pilot.pause()
        assert db.unconsolidated_count() == 0 and screen.queue[0]["excluded"] and screen.queue[1]["excluded"]
        assert "2 marked don't learn" in str(screen.query_one("#queue-title").render())
        await pilot.press("d")  # and back
        await pilot.pause()
        assert db.unconsolidated_count() == 2
        await pilot.press("c")  # the whole conversation
        await pilot.pause()
        assert db.unconsolidated_count() == 0 and db.excluded(waiting)
        assert len(db.messages(waiting)) == 2  # kept in the log

        await pilot.press("f")  # forget the highlighted message's conversation: asks first
        await until(pilot, lambda: isinstance(app.screen, ForgetScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ForgetScreen))
        assert len(db.messages(waiting)) == 2 and len(db.messages(learned)) == 1  # nothing forgotten


async def test_ctrl_l_keeps_the_open_conversation_out_of_the_nights_and_a_cut_reply_is_marked(db):
    runtime = FakeRuntime([" ".join(["loop"] * 40), "Fine."])
    db.set_state("first_run_seen", "test")
    session = ChatSession(db, runtime, Config(max_reply_tokens=8))
    app = make_app(session)
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+l")  # nothing said yet
        await pilot.pause()
        assert any("still empty" in message for message, _ in seen)
        await say(pilot, "tell me a story")
        await settle(pilot)
        assert CUT_MARK in str(bubbles(pilot)[-1].query_one(".mark").render())
        assert [m["status"] for m in db.messages(session.conversation_id)] == ["complete", "cut"]
        assert db.unconsolidated_count() == 1  # the cut reply is never learned; the user's turn is
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert db.unconsolidated_count() == 0 and any("no night will learn" in m for m, _ in seen)
        from agent.tui.widgets import EXCLUDED_MARK

        assert all(EXCLUDED_MARK in str(b.query_one(".mark").render()) for b in bubbles(pilot))
        listing = chat(pilot).query_one(ConversationList)
        assert "not learned" in str(listing.get_option_at_index(1).prompt)
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert db.unconsolidated_count() == 1 and any("learned again" in m for m, _ in seen)


async def test_re_check_runs_dreamer_memory_check_in_another_process(db):
    """`r` on a memory with no night: the real command runs, finds nothing to check, and says so."""
    db.set_state("first_run_seen", "test")
    app = make_app(ChatSession(db, FakeRuntime(), Config()))
    seen = record_notifications(app)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, MemoryScreen))
        await pilot.press("r")
        await until(pilot, lambda: any("no facts to check" in m for m, _ in seen), timeout=60)
        assert not app.screen.query_one("#recheck").display
