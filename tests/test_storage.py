import os
import stat
from datetime import datetime, time

import pytest
from sqlite_utils import Database

from storage import Store, StoreError
from storage.days import day_of, parse_boundary
from storage.migrations import migrations

EXPECTED_COLUMNS = {
    "conversations": {"id", "title", "day", "created_at", "updated_at", "excluded_at"},
    "messages": {
        "id", "conversation_id", "role", "content", "created_at", "day", "status", "writer_pid",
        "consolidated_run_id", "excluded_at",
    },
    "sleep_runs": {"id", "day", "started_at", "finished_at", "status", "preset", "reason", "report", "metrics",
                   "report_seen_at", "pid"},
    "adapters": {"id", "night", "day", "run_id", "path", "gguf_path", "status", "created_at", "metrics", "config"},
    "probes": {"id", "run_id", "day", "question", "answer", "distractors", "kind"},
    "stack_versions": {"id", "nights", "parent", "created_at", "reason"},
    "state": {"key", "value"},
    "schedule_events": {"id", "at", "event", "detail", "run_id"},
}


def test_blank_database_gets_expected_tables(store):
    for table, columns in EXPECTED_COLUMNS.items():
        assert set(store.db[table].columns_dict) == columns, table
    assert store.db["messages_fts"].exists()
    assert store.db.journal_mode == "wal"


def test_reapplying_migrations_is_a_noop(store):
    before = store.db["_sqlite_migrations"].count
    assert migrations.pending(store.db) == []
    migrations.apply(store.db)
    reopened = Store(store.path)
    assert reopened.db["_sqlite_migrations"].count == before == 6


def test_files_are_private(store, dreamer_home):
    assert stat.S_IMODE(os.stat(dreamer_home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


@pytest.mark.parametrize(
    "moment, boundary, expected",
    [
        (datetime(2026, 11, 22, 1, 30), time(4, 0), "2026-11-21"),
        (datetime(2026, 11, 22, 3, 59), time(4, 0), "2026-11-21"),
        (datetime(2026, 11, 22, 4, 0), time(4, 0), "2026-11-22"),
        (datetime(2026, 11, 22, 23, 59), time(4, 0), "2026-11-22"),
        (datetime(2026, 11, 22, 0, 10), time(0, 0), "2026-11-22"),
        (datetime(2026, 11, 22, 5, 0), time(6, 30), "2026-11-21"),
    ],
)
def test_day_boundary(moment, boundary, expected):
    assert str(day_of(moment, boundary)) == expected


def test_bad_boundary_is_named():
    with pytest.raises(ValueError, match="day_boundary must be HH:MM"):
        parse_boundary("25:00")


def test_message_day_follows_the_boundary(store, clock, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time_module = __import__("time")
    time_module.tzset()
    try:
        conversation = store.new_conversation()
        clock.moment = clock.moment.replace(day=22, hour=1, minute=30)
        late = store.add_message(conversation, "user", "still awake")
        clock.moment = clock.moment.replace(hour=9)
        morning = store.add_message(conversation, "user", "good morning")
        days = {m["id"]: m["day"] for m in store.messages(conversation)}
        assert days[late] == "2026-11-21"
        assert days[morning] == "2026-11-22"
    finally:
        monkeypatch.delenv("TZ")
        time_module.tzset()


def test_title_comes_from_first_user_turn(store):
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "  My sister\nlives in Lisbon and works as a pilot for TAP airlines  ")
    title = store.conversation(conversation)["title"]
    assert title.startswith("My sister lives in Lisbon")
    assert len(title) <= 48


def test_reply_lifecycle_and_crash_recovery(store):
    conversation = store.new_conversation()
    reply = store.start_reply(conversation)
    store.update_reply(reply, "partial")
    # A process that died mid-reply: its pid no longer exists.
    store.db["messages"].update(reply, {"writer_pid": 2**22 + 12345})
    reopened = Store(store.path)
    row = reopened.db["messages"].get(reply)
    assert (row["status"], row["content"]) == ("interrupted", "partial")


def test_live_writer_is_not_recovered(store):
    conversation = store.new_conversation()
    reply = store.start_reply(conversation)  # our own pid: alive
    Store(store.path)
    assert store.db["messages"].get(reply)["status"] == "generating"
    store.finish_reply(reply, "done")
    assert store.db["messages"].get(reply)["status"] == "complete"


def test_unknown_role_and_conversation_are_named(store):
    conversation = store.new_conversation()
    with pytest.raises(StoreError, match="role must be one of"):
        store.add_message(conversation, "robot", "hi")
    with pytest.raises(StoreError, match="no conversation with id 999"):
        store.add_message(999, "user", "hi")


def test_search_day_finds_other_conversations_of_the_same_day(store, clock):
    first = store.new_conversation()
    store.add_message(first, "user", "My sister Ana lives in Lisbon.")
    store.add_message(first, "user", "I like green tea.")
    second = store.new_conversation()
    hits = store.search_day(store.today(), "where does Ana live?", exclude_conversation=second)
    assert [h["content"] for h in hits] == ["My sister Ana lives in Lisbon."]
    assert store.search_day("2020-01-01", "Ana") == []
    assert store.search_day(store.today(), "?? !!") == []  # punctuation only: no FTS syntax error


def test_search_day_none_searches_every_day(store):
    store.import_conversations([{"day": "2025-03-03", "messages": [{"role": "user", "content": "Ana lives in Lisbon."}]},
                                {"day": "2025-03-05", "messages": [{"role": "user", "content": "Ana moved to Porto."}]}])
    assert store.search_day("2025-03-05", "where is Ana?") and len(store.search_day("2025-03-05", "Ana")) == 1
    assert {h["day"] for h in store.search_day(None, "where is Ana?")} == {"2025-03-03", "2025-03-05"}


def test_very_long_message_is_stored_whole(store):
    conversation = store.new_conversation()
    text = "word " * 50_000
    pk = store.add_message(conversation, "user", text)
    assert store.db["messages"].get(pk)["content"] == text


def test_counts_and_unconsolidated(store):
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "one")
    store.add_message(conversation, "assistant", "two")
    assert store.unconsolidated_count() == 2
    assert store.day_counts() == [{"day": str(store.today()), "messages": 2, "unconsolidated": 2}]
    assert store.memory_version() == "none yet"
    assert store.last_sleep() is None


def test_second_connection_reads_while_first_writes(store):
    other = Store(store.path)
    conversation = store.new_conversation()
    with store.db.atomic():
        store.add_message(conversation, "user", "written in a transaction")
        assert other.db["messages"].count == 0  # WAL: the reader sees the last commit
    assert other.db["messages"].count == 1
    assert Database(store.path).journal_mode == "wal"


def test_unfinished_replies_and_excluded_turns_are_never_learned(store):
    from storage.ledger import unconsolidated

    kept = store.new_conversation()
    store.add_message(kept, "user", "My parrot is called Bramble.")
    store.finish_reply(store.start_reply(kept), "Lovely name!")
    store.finish_reply(store.start_reply(kept), "the queen of Lisbon the queen", cut=True)
    store.finish_reply(store.start_reply(kept), "Half a rep", interrupted=True)
    private = store.new_conversation()
    store.add_message(private, "user", "My bank PIN is 4711.")
    secret = store.add_message(kept, "user", "And my diary's code word is Heron.")
    assert store.messages(kept)[2]["status"] == "cut"

    store.exclude(conversation_id=private)
    store.exclude(message_ids=[secret])
    store.add_message(private, "user", "Its PUK is 9901.")  # a later turn of an excluded conversation
    waiting = [m["content"] for c in unconsolidated(store) for m in c["messages"]]
    assert waiting == ["My parrot is called Bramble.", "Lovely name!"]
    from dreamer.sleep.night import collect  # what a night takes: the same turns

    assert [m["content"] for c in collect(store, None)[0] for m in c["messages"]] == waiting
    assert store.unconsolidated_count() == 2 == sum(r["unconsolidated"] for r in store.day_counts())
    assert len(store.messages(private)) == 2 and store.excluded(private)  # kept in the log

    store.exclude(conversation_id=private, undo=True)
    store.exclude(message_ids=[secret], undo=True)
    assert store.unconsolidated_count() == 5
    with pytest.raises(StoreError, match="no message with id 999"):
        store.exclude(message_ids=[999])


def test_a_turn_kept_from_sleep_takes_the_replies_that_answer_it(store):
    conversation = store.new_conversation()
    pin = store.add_message(conversation, "user", "My PIN is 4711.")
    echo = store.add_message(conversation, "assistant", "Noted: your PIN is 4711.")
    later = store.add_message(conversation, "user", "My cat is Miso.")
    store.exclude(message_ids=[pin])
    marked = {m["id"] for m in store.messages(conversation) if m["excluded_at"]}
    assert marked == {pin, echo} and later not in marked
    store.exclude(message_ids=[pin], undo=True)
    assert not any(m["excluded_at"] for m in store.messages(conversation))
