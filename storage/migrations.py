"""Schema of dreamer.db, as numbered migrations.

Opening a `Store` applies whatever is pending, so a new and an old database behave the same.
A migration that has landed is never edited: change the schema by adding the next one.
"""

from __future__ import annotations

import json

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("dreamer")


@migrations()
def m001_conversations_and_messages(db: Database) -> None:
    db["conversations"].create(
        {"id": int, "title": str, "day": str, "created_at": str, "updated_at": str},
        pk="id",
    )
    db["conversations"].create_index(["day"])
    db["messages"].create(
        {
            "id": int,
            "conversation_id": int,
            "role": str,  # system | user | assistant
            "content": str,
            "created_at": str,  # ISO-8601, UTC
            "day": str,  # YYYY-MM-DD after the day boundary, local time
            "status": str,  # complete | generating | interrupted | cut (at the reply token limit)
            "writer_pid": int,  # process writing a 'generating' row, to detect crashes
            "consolidated_run_id": int,  # sleep run that consolidated it; NULL = waiting
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        not_null={"conversation_id", "role", "content", "created_at", "day", "status"},
    )
    db["messages"].create_index(["conversation_id", "id"])
    db["messages"].create_index(["day", "consolidated_run_id"])
    db["messages"].enable_fts(["content"], create_triggers=True, tokenize="porter")


@migrations()
def m002_sleep_runs_and_adapters(db: Database) -> None:
    db["sleep_runs"].create(
        {
            "id": int,
            "day": str,  # the day consolidated (the latest one when several)
            "started_at": str,
            "finished_at": str,
            "status": str,  # running | promoted | rejected | interrupted | failed | dry-run
            "preset": str,
            "reason": str,  # why rejected / failed
            "report": str,  # morning report, Markdown
            "metrics": str,  # JSON
        },
        pk="id",
    )
    db["adapters"].create(
        {
            "id": int,
            "night": int,  # 1, 2, 3 ... in promotion order
            "day": str,
            "run_id": int,
            "path": str,  # PEFT adapter folder
            "gguf_path": str,  # llama.cpp LoRA adapter, once exported
            "status": str,  # candidate | active | retired | forgotten (storage.forget)
            "created_at": str,
            "metrics": str,  # JSON
            "config": str,  # JSON
        },
        pk="id",
        foreign_keys=[("run_id", "sleep_runs", "id")],
    )


@migrations()
def m003_probes(db: Database) -> None:
    # Held-out closed-book probes written by the teacher during a sleep: the gate scores them,
    # and once their night is promoted later nights replay them to keep old memories.
    db["probes"].create(
        {
            "id": int,
            "run_id": int,
            "day": str,
            "question": str,
            "answer": str,
            "distractors": str,  # JSON list
            "kind": str,  # recall | update | general
        },
        pk="id",
        foreign_keys=[("run_id", "sleep_runs", "id")],
    )
    db["probes"].create_index(["run_id"])


@migrations()
def m004_stack_versions_schedule_and_report_seen(db: Database) -> None:
    # A stack version is the list of nights active together; promotion adds one, rollback
    # re-activates one. `state.active_version` names the active version (0 = the base alone);
    # `parent` is the version a promotion was trained on, where `dreamer rollback` goes back to.
    db["stack_versions"].create({"id": int, "nights": str, "parent": int, "created_at": str, "reason": str}, pk="id")
    db["state"].create({"key": str, "value": str}, pk="key")
    # What the scheduler did each time it fired (ran, skipped, deferred), for `dreamer schedule`.
    db["schedule_events"].create({"id": int, "at": str, "event": str, "detail": str, "run_id": int}, pk="id")
    # The chat shows a night's morning report once, on the first launch after it.
    db["sleep_runs"].add_column("report_seen_at", str)
    nights = [row["night"] for row in db.query("select night from adapters where status = 'active' order by night")]
    if nights:  # a database promoted before versions existed: its stack becomes version 1
        db["stack_versions"].insert({"id": 1, "nights": json.dumps(nights), "parent": 0, "created_at": "", "reason": "existing stack"})
        db["state"].insert({"key": "active_version", "value": "1"})


@migrations()
def m005_sleep_run_pid(db: Database) -> None:
    # The process running a sleep, so `dreamer status` can name it and the recovery pass can tell
    # a live run from one whose process was killed (SIGKILL leaves its row `running`).
    db["sleep_runs"].add_column("pid", int)


@migrations()
def m006_dont_learn_this_and_probe_checks(db: Database) -> None:
    # "Don't learn this": a turn, or a whole conversation (its later turns too), that no night learns;
    # kept in the log. NULL = learnable; else when the user excluded it.
    db["messages"].add_column("excluded_at", str)
    db["conversations"].add_column("excluded_at", str)
    # What a stack version answers to each probe, closed book (the gate of the night that made it,
    # or `dreamer memory --check`): the Memory screen reads these, it never runs a model.
    db["probe_checks"].create(
        {"id": int, "probe_id": int, "version": int, "checked_at": str, "chosen": str, "p_answer": float,
         "correct": int},
        pk="id", foreign_keys=[("probe_id", "probes", "id")])
    db["probe_checks"].create_index(["probe_id", "version"])
