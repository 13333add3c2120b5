"""Stack versions: promotion adds one, rollback re-activates one, and the turns follow."""

from __future__ import annotations

import pytest
from sqlite_utils import Database

from storage import Store, ledger
from storage.migrations import migrations


def promote_night(store, night: int, day: str = "2026-11-21") -> int:
    conversation = store.new_conversation()
    store.add_message(conversation, "user", f"fact number {night}")
    ids = [m["id"] for c in ledger.unconsolidated(store) for m in c["messages"]]
    run = ledger.start_run(store, day, "test")
    ledger.promote(store, run, {"night": night, "day": day, "path": f"/x/night-{night}", "gguf_path": None,
                                "metrics": "{}", "config": "{}"}, ids, report="# Morning report")
    return run


def test_promotions_make_versions_and_rollback_requeues_the_turns(store):
    assert ledger.versions(store)[0]["nights"] == [] and ledger.active_version(store) == 0
    for night in (1, 2, 3):
        promote_night(store, night)
    assert [v["nights"] for v in ledger.versions(store)] == [[], [1], [1, 2], [1, 2, 3]]
    assert ledger.active_version(store) == 3 and store.unconsolidated_count() == 0

    assert ledger.previous_version(store) == 2
    ledger.activate(store, 1)
    assert [a["night"] for a in ledger.adapters(store, "active")] == [1]
    assert store.unconsolidated_count() == 2  # nights 2 and 3's turns wait for sleep again
    assert {m["content"] for c in ledger.unconsolidated(store) for m in c["messages"]} == {"fact number 2", "fact number 3"}
    assert store.memory_version() == "night 1"

    promote_night(store, 4)  # trained on version 1, with the waiting turns re-learned
    assert ledger.versions(store)[-1] == {**ledger.versions(store)[-1], "nights": [1, 4], "parent": 1}
    assert store.unconsolidated_count() == 0
    assert ledger.previous_version(store) == 1  # back to what night 4 was built on, not to version 3

    ledger.activate(store, 3)  # roll forward past night 4: what night 4 (last) consolidated waits again
    assert [a["night"] for a in ledger.adapters(store, "active")] == [1, 2, 3]
    assert {m["content"] for c in ledger.unconsolidated(store) for m in c["messages"]} == {
        "fact number 2", "fact number 3", "fact number 4"}  # redundant for 2 and 3, never lost
    ledger.activate(store, 4)
    assert store.unconsolidated_count() == 0


def test_unknown_version_and_rolling_back_the_base_are_refused(store):
    with pytest.raises(ValueError, match="already the base alone"):
        ledger.previous_version(store)
    promote_night(store, 1)
    with pytest.raises(ValueError, match="no stack version 7; known versions: 0, 1"):
        ledger.activate(store, 7)
    assert ledger.active_version(store) == 1


def test_a_database_promoted_before_versions_gets_version_1(dreamer_home):
    dreamer_home.mkdir()
    db = Database(dreamer_home / "old.db")
    migrations.apply(db, stop_before="m004_stack_versions_schedule_and_report_seen")  # last session's schema
    db["adapters"].insert_all([{"night": n, "day": "2026-11-20", "run_id": None, "path": f"/x/{n}", "status": "active"}
                               for n in (1, 2)])
    db.close()
    store = Store(dreamer_home / "old.db")
    assert ledger.active_version(store) == 1 and ledger.versions(store)[1]["nights"] == [1, 2]


def test_the_morning_report_is_shown_once(store):
    assert store.unseen_report() is None
    run = promote_night(store, 1)
    assert store.unseen_report()["id"] == run
    store.mark_report_seen(run)
    assert store.unseen_report() is None
    failed = ledger.start_run(store, "2026-11-22", "test")
    ledger.finish_run(store, failed, "failed", reason="boom")
    assert store.unseen_report() is None  # a failed night has no morning report to show
