"""No write fails because another process writes: the chat and `dreamer import` beside a sleep.

A sleep's commits (probes, the promotion, run rows) and the chat's streaming reply write the
same WAL database from two processes. sqlite-utils' deferred `BEGIN` made a transaction that
reads first (its `update()` does) fail at once with "database is locked" when the other process
committed in between; `Store` begins every write with `BEGIN IMMEDIATE` instead.
"""

from __future__ import annotations

import multiprocessing
import time

from storage import Store, ledger

WRITES = 150


def _sleep_like_writer(path: str, stop, started) -> None:
    """Another process committing the way a night does: read, then write, in one transaction."""
    store = Store(path)
    started.set()
    while not stop.is_set():
        with store.write():
            ledger.next_night(store)  # a read first, as promote() does
            store.db["state"].upsert({"key": "noise", "value": str(time.time())}, pk="key")
            time.sleep(0.002)  # hold the write lock a little, like a real commit
        run = ledger.start_run(store, "2026-11-21", "test")
        ledger.finish_run(store, run, "rejected")
        time.sleep(0.005)  # a night commits now and then, never back to back (SQLite locks are not fair)


def test_chat_writes_and_imports_succeed_while_another_process_commits(dreamer_home):
    path = dreamer_home / "dreamer.db"
    store = Store(path)
    context = multiprocessing.get_context("spawn")
    stop, started = context.Event(), context.Event()
    writer = context.Process(target=_sleep_like_writer, args=(str(path), stop, started))
    writer.start()
    try:
        assert started.wait(60), "the writer process did not start"
        conversation = store.new_conversation()
        for i in range(WRITES):
            store.add_message(conversation, "user", f"turn {i}")
            reply = store.start_reply(conversation)
            store.update_reply(reply, f"partial {i}")  # reads the row, then writes it
            store.finish_reply(reply, f"reply {i}")
            if i % 25 == 0:
                store.import_conversations([{"day": "2026-11-21", "title": "", "messages": [
                    {"role": "user", "content": f"imported {i}"}]}])
    finally:
        stop.set()
        writer.join(30)
    assert writer.exitcode == 0, "the other writer failed"
    contents = [m["content"] for m in store.messages(conversation)]
    assert contents == [text for i in range(WRITES) for text in (f"turn {i}", f"reply {i}")]
