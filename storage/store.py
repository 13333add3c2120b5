"""`Store`: the only way into dreamer.db.

Opening a store creates `DREAMER_HOME` (0700) and the database (0600), switches on WAL so a
second `dreamer chat` or a sleep can read while another process writes, and applies pending
migrations. Multi-row writes run in `db.atomic()`.

A reply is written while it streams: `start_reply` inserts a row marked `generating` (with the
writer's pid), `update_reply` saves the partial text, `finish_reply` marks it `complete` or
`interrupted`. A row left `generating` by a process that no longer exists is marked
`interrupted` the next time any store opens, so a crash loses at most the last partial update.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timezone
from pathlib import Path

from sqlite_utils import Database

from storage.days import day_of
from storage.migrations import migrations
from storage.paths import database_path, dreamer_home, ensure_private_dir, make_private

# A turn waits for sleep until the night that last consolidated it is in the active stack: after
# a rollback, the turns of the nights rolled back wait again. (Only the last consolidation is
# recorded, so a turn re-learned by a later night and then rolled past may be learned a third
# time: redundant work, never a lost turn.)
WAITING = ("(consolidated_run_id is null or consolidated_run_id not in "
           "(select run_id from adapters where status = 'active'))")

ROLES = ("system", "user", "assistant")
TITLE_CHARS = 48


class StoreError(RuntimeError):
    """A database problem shown to the user as it is (e.g. locked, unknown conversation)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Store:
    def __init__(
        self,
        path: Path | None = None,
        *,
        boundary: time = time(4, 0),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.path = Path(path) if path else database_path(dreamer_home())
        ensure_private_dir(self.path.parent)
        self.boundary = boundary
        self.clock = clock
        # One connection serves the UI thread and the streaming worker: a write (and its
        # transaction) must not interleave with another thread's.
        self._lock = threading.RLock()
        try:
            # The chat UI writes a streaming reply from a worker thread: one connection shared
            # across threads (SQLite itself serializes), WAL for other processes.
            self.db = Database(sqlite3.connect(self.path, check_same_thread=False))
            self.db.execute("PRAGMA busy_timeout = 5000")  # wait for another writer, not fail
            self.db.enable_wal()
            migrations.apply(self.db)
        except Exception as err:  # sqlite3.DatabaseError, OperationalError ("locked")
            raise StoreError(f"cannot open the database {self.path}: {err}") from err
        for suffix in ("", "-wal", "-shm"):
            make_private(Path(f"{self.path}{suffix}"))
        self.recover_dead_replies()

    # --- time --------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock()

    def today(self) -> date:
        return day_of(self.now(), self.boundary)

    # --- conversations -----------------------------------------------------
    def new_conversation(self, title: str = "", day: date | None = None) -> int:
        stamp = self.now().isoformat()
        row = {"title": title, "day": str(day or self.today()), "created_at": stamp, "updated_at": stamp}
        return self.db["conversations"].insert(row).last_pk

    def conversation(self, conversation_id: int) -> dict:
        rows = list(self.db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise StoreError(f"no conversation with id {conversation_id}")
        return rows[0]

    def conversations(self, limit: int = 200, day: date | str | None = None) -> list[dict]:
        """Newest first, with their message count."""
        where, args = ("where c.day = ?", [str(day)]) if day else ("", [])
        sql = f"""
            select c.*, count(m.id) as n_messages from conversations c
            left join messages m on m.conversation_id = c.id
            {where} group by c.id order by c.updated_at desc, c.id desc limit ?
        """
        return list(self.db.query(sql, [*args, limit]))

    def messages(self, conversation_id: int) -> list[dict]:
        return list(self.db["messages"].rows_where("conversation_id = ?", [conversation_id], order_by="id"))

    # --- turns ---------------------------------------------------------------
    def add_message(self, conversation_id: int, role: str, content: str, status: str = "complete") -> int:
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self.conversation(conversation_id)  # names a missing conversation clearly
        moment = self.now()
        with self._lock, self.db.atomic():
            pk = self.db["messages"].insert(
                {
                    "conversation_id": conversation_id,
                    "role": role,
                    "content": content,
                    "created_at": moment.isoformat(),
                    "day": str(day_of(moment, self.boundary)),
                    "status": status,
                    "writer_pid": os.getpid() if status == "generating" else None,
                    "consolidated_run_id": None,
                }
            ).last_pk
            updates = {"updated_at": moment.isoformat()}
            if role == "user" and not self.conversation(conversation_id)["title"]:
                updates["title"] = " ".join(content.split())[:TITLE_CHARS]
            self.db["conversations"].update(conversation_id, updates)
        return pk

    def start_reply(self, conversation_id: int) -> int:
        return self.add_message(conversation_id, "assistant", "", status="generating")

    def update_reply(self, message_id: int, content: str) -> None:
        with self._lock:
            self.db["messages"].update(message_id, {"content": content})

    def finish_reply(self, message_id: int, content: str, interrupted: bool = False) -> None:
        if interrupted and not content:
            # Stopped or failed before the first token: there is no partial reply to keep.
            with self._lock:
                self.db["messages"].delete(message_id)
            return
        status = "interrupted" if interrupted else "complete"
        with self._lock:
            self.db["messages"].update(message_id, {"content": content, "status": status, "writer_pid": None})

    def recover_dead_replies(self) -> None:
        rows = list(self.db["messages"].rows_where("status = 'generating'", select="id, writer_pid"))
        dead = [r["id"] for r in rows if not _pid_alive(r["writer_pid"])]
        if dead:
            with self.db.atomic():
                for pk in dead:
                    self.db["messages"].update(pk, {"status": "interrupted", "writer_pid": None})

    # --- short-term memory ---------------------------------------------------
    def search_day(
        self, day: date | str, query: str, exclude_conversation: int | None = None, limit: int = 20
    ) -> list[dict]:
        """Messages of `day` that match `query` (FTS5, best first); any word may match."""
        words = [w for w in "".join(c if c.isalnum() else " " for c in query).split() if len(w) > 2]
        if not words:
            return []
        fts_query = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        sql = """
            select m.* from messages m join messages_fts f on f.rowid = m.id
            where messages_fts match ? and m.day = ? and m.content != ''
              and (? is null or m.conversation_id != ?)
            order by f.rank limit ?
        """
        return list(self.db.query(sql, [fts_query, str(day), exclude_conversation, exclude_conversation, limit]))

    # --- days and consolidation -------------------------------------------------
    def day_counts(self) -> list[dict]:
        """Per day: messages, and those not yet consolidated (oldest day first)."""
        sql = """
            select day, count(*) as messages,
                   sum(case when {WAITING} then 1 else 0 end) as unconsolidated
            from messages group by day order by day
        """.format(WAITING=WAITING)
        return list(self.db.query(sql))

    def unconsolidated_count(self) -> int:
        return self.db["messages"].count_where(f"{WAITING} and status != 'generating'")

    def unconsolidated_days(self) -> list[str]:
        sql = f"select distinct day from messages where {WAITING} order by day"
        return [row["day"] for row in self.db.query(sql)]

    def last_sleep(self) -> dict | None:
        rows = list(self.db["sleep_runs"].rows_where(order_by="id desc", limit=1))
        return rows[0] if rows else None

    def last_activity(self) -> tuple[datetime | None, bool]:
        """(time of the newest turn, whether a reply is being written right now)."""
        row = next(iter(self.db.query(
            "select max(created_at) as at, coalesce(sum(status = 'generating'), 0) as live from messages")))
        return (datetime.fromisoformat(row["at"]) if row["at"] else None), bool(row["live"])

    def unseen_report(self) -> dict | None:
        """The last night's run if its morning report was never shown (only nights that finished)."""
        rows = list(self.db["sleep_runs"].rows_where("status in ('promoted', 'rejected')", order_by="id desc", limit=1))
        return rows[0] if rows and rows[0]["report"] and not rows[0]["report_seen_at"] else None

    def mark_report_seen(self, run_id: int) -> None:
        with self._lock, self.db.atomic():
            self.db["sleep_runs"].update(run_id, {"report_seen_at": self.now().isoformat()})

    def active_adapters(self) -> list[dict]:
        return list(self.db["adapters"].rows_where("status = 'active'", order_by="night"))

    def memory_version(self) -> str:
        """What the status bar shows: the newest active night, or "none yet"."""
        active = self.active_adapters()
        return f"night {active[-1]['night']}" if active else "none yet"

    # --- bulk import ------------------------------------------------------------
    def import_conversations(self, records: Iterable[dict]) -> list[int]:
        """Insert parsed transcript records all at once: any failure imports nothing."""
        ids = []
        stamp = self.now().isoformat()
        with self._lock, self.db.atomic():
            for record in records:
                pk = self.db["conversations"].insert(
                    {"title": record.get("title") or "", "day": record["day"], "created_at": stamp, "updated_at": stamp}
                ).last_pk
                self.db["messages"].insert_all(
                    {
                        "conversation_id": pk,
                        "role": m["role"],
                        "content": m["content"],
                        "created_at": stamp,
                        "day": record["day"],
                        "status": "complete",
                        "writer_pid": None,
                        "consolidated_run_id": None,
                    }
                    for m in record["messages"]
                )
                ids.append(pk)
        return ids

    def close(self) -> None:
        self.db.close()


def dumps(value) -> str:
    """JSON for the metrics/config columns."""
    return json.dumps(value, sort_keys=True, default=str)
