"""`Store`: the only way into dreamer.db.

Opening a store creates `DREAMER_HOME` (0700) and the database (0600), switches on WAL so a
second `dreamer chat` or a sleep can read while another process writes, and applies pending
migrations. Every write runs in `Store.write()`, one transaction.

Writes take the write lock first (`BEGIN IMMEDIATE`, `_Database.atomic`): a deferred
transaction that reads before it writes cannot wait for another writer in WAL mode, and failed
with "database is locked" while a sleep committed. A home on a read-only disk opens read-only
(`readonly=True`), so `status`, `log` and `export` still work there.

A reply is written while it streams: `start_reply` inserts a row marked `generating` (with the
writer's pid), `update_reply` saves the partial text, `finish_reply` marks it `complete` or
`interrupted`. A row left `generating` by a process that no longer exists is marked
`interrupted` the next time any store opens, so a crash loses at most the last partial update.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
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

# What a night may learn: finished turns with text that the user did not mark "don't learn this"
# (the turn, or its whole conversation). An interrupted or cut reply (status `interrupted`, `cut`)
# is the model's own unfinished output: never learned, kept in the log.
LEARNABLE = ("status = 'complete' and content != '' and excluded_at is null and conversation_id not in "
             "(select id from conversations where excluded_at is not null)")

ROLES = ("system", "user", "assistant")
TITLE_CHARS = 48


BUSY_TIMEOUT_MS = 30_000  # a write waits this long for another process's write, then fails


class StoreError(RuntimeError):
    """A database problem shown to the user as it is (e.g. locked, unknown conversation)."""


class _Database(Database):
    """sqlite-utils' Database whose outermost transactions begin with `BEGIN IMMEDIATE`.

    sqlite-utils opens a deferred `BEGIN`, and its `update()` reads the row before it writes.
    In WAL mode a read transaction that then wants to write fails at once with SQLITE_BUSY when
    another connection committed in between; busy_timeout cannot retry it (the snapshot is
    stale). `BEGIN IMMEDIATE` takes the write lock before the first read, waiting up to
    busy_timeout for it. Nested blocks keep sqlite-utils' savepoints.
    """

    @contextmanager
    def atomic(self):
        if self.conn.in_transaction:
            with super().atomic():
                yield self
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise


def describe_sqlite_error(err: Exception, path: Path) -> str:
    """One line for the user: what went wrong with dreamer.db and what to do."""
    text = str(err)
    if "locked" in text or "busy" in text:
        return (f"{path} is busy: another dreamer process held a write for over {BUSY_TIMEOUT_MS // 1000} s; "
                "nothing was written, try again")
    if "disk is full" in text or "No space left" in text:
        return f"the disk holding {path} is full: nothing was written; free some space and try again"
    if "readonly" in text or "read-only" in text:
        return f"{path} is read-only: nothing can be written there (status, log and export still work)"
    if "malformed" in text or "not a database" in text:
        return f"{path} is damaged ({text}): restore it from a backup, or move it away to start afresh"
    return f"{path}: {text}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (0 or None: no)."""
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
        readonly: bool = False,
    ) -> None:
        self.path = Path(path) if path else database_path(dreamer_home())
        self.readonly = readonly
        self.boundary = boundary
        self.clock = clock
        # One connection serves the UI thread and the streaming worker: a write (and its
        # transaction) must not interleave with another thread's.
        self._lock = threading.RLock()
        try:
            if readonly:
                connection = _connect_readonly(self.path)
            else:
                ensure_private_dir(self.path.parent)
                # The chat UI writes a streaming reply from a worker thread: one connection
                # shared across threads (SQLite itself serializes), WAL for other processes.
                connection = sqlite3.connect(self.path, check_same_thread=False)
            self.db = _Database(connection)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # wait for another writer, not fail
            if readonly:
                if migrations.pending(self.db):
                    raise StoreError(f"{self.path} needs an upgrade that a read-only home cannot take: "
                                     "make DREAMER_HOME writable and run any dreamer command")
            else:
                self.db.enable_wal()
                migrations.apply(self.db)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the database: {describe_sqlite_error(err, self.path)}") from err
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(f"{self.path.parent} is read-only: nothing can be written there "
                                 "(status, log and export still work)") from err
            raise StoreError(f"cannot open the database {self.path}: {err.strerror or err}") from err
        if readonly:
            return
        for suffix in ("", "-wal", "-shm"):
            make_private(Path(f"{self.path}{suffix}"))
        self.recover_dead_replies()

    @contextmanager
    def write(self):
        """One write transaction (BEGIN IMMEDIATE), serialized with this store's other threads.

        A failed write (busy past the timeout, a full disk, a read-only file) is rolled back whole
        and raised as a StoreError that says which, so the chat and the CLI show one clear line.
        """
        try:
            with self._lock, self.db.atomic():
                yield self.db
        except sqlite3.Error as err:
            raise StoreError(describe_sqlite_error(err, self.path)) from err

    # --- time --------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock()

    def today(self) -> date:
        return day_of(self.now(), self.boundary)

    # --- conversations -----------------------------------------------------
    def new_conversation(self, title: str = "", day: date | None = None) -> int:
        stamp = self.now().isoformat()
        row = {"title": title, "day": str(day or self.today()), "created_at": stamp, "updated_at": stamp}
        with self.write():
            return self.db["conversations"].insert(row).last_pk

    def new_conversation_with(self, role: str, content: str) -> tuple[int, int]:
        """A new conversation and its first message, in one transaction: never an empty conversation left."""
        with self.write():
            conversation_id = self.new_conversation()
            return conversation_id, self.add_message(conversation_id, role, content)

    def conversation(self, conversation_id: int) -> dict:
        rows = list(self.db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise StoreError(f"no conversation with id {conversation_id}")
        return rows[0]

    def conversations(self, limit: int = 200, day: date | str | None = None) -> list[dict]:
        """Newest first, with their message count; an empty conversation is not one (the chat stores a
        conversation with its first message; older versions left empty ones behind)."""
        where, args = ("where c.day = ?", [str(day)]) if day else ("", [])
        sql = f"""
            select c.*, count(m.id) as n_messages from conversations c
            join messages m on m.conversation_id = c.id
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
        with self.write():
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
        with self.write():
            self.db["messages"].update(message_id, {"content": content})

    def finish_reply(self, message_id: int, content: str, interrupted: bool = False, cut: bool = False) -> None:
        """`interrupted`: stopped by the user or a failure; `cut`: ran to the reply token limit."""
        if interrupted and not content:
            # Stopped or failed before the first token: there is no partial reply to keep.
            with self.write():
                self.db["messages"].delete(message_id)
            return
        status = "interrupted" if interrupted else "cut" if cut else "complete"
        with self.write():
            self.db["messages"].update(message_id, {"content": content, "status": status, "writer_pid": None})

    def recover_dead_replies(self) -> None:
        rows = list(self.db["messages"].rows_where("status = 'generating'", select="id, writer_pid"))
        dead = [r["id"] for r in rows if not pid_alive(r["writer_pid"])]
        if dead:
            with self.write():
                for pk in dead:
                    self.db["messages"].update(pk, {"status": "interrupted", "writer_pid": None})

    # --- short-term memory ---------------------------------------------------
    def search_day(
        self, day: date | str | None, query: str, exclude_conversation: int | None = None, limit: int = 20
    ) -> list[dict]:
        """Messages of `day` (None: of every day) that match `query` (FTS5, best first); any word may match."""
        words = [w for w in "".join(c if c.isalnum() else " " for c in query).split() if len(w) > 2]
        if not words:
            return []
        fts_query = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        sql = """
            select m.* from messages m join messages_fts f on f.rowid = m.id
            where messages_fts match ? and (? is null or m.day = ?) and m.content != ''
              and (? is null or m.conversation_id != ?)
            order by f.rank limit ?
        """
        day = None if day is None else str(day)
        return list(self.db.query(sql, [fts_query, day, day, exclude_conversation, exclude_conversation, limit]))

    # --- days and consolidation -------------------------------------------------
    def day_counts(self) -> list[dict]:
        """Per day: messages, and those waiting for sleep (oldest day first)."""
        sql = f"""
            select day, count(*) as messages,
                   sum(case when {WAITING} and {LEARNABLE} then 1 else 0 end) as unconsolidated
            from messages group by day order by day
        """
        return list(self.db.query(sql))

    def unconsolidated_count(self) -> int:
        """Messages the next sleep will learn (the same ones `storage.ledger.unconsolidated` hands it)."""
        return self.db["messages"].count_where(f"{WAITING} and {LEARNABLE}")

    def unconsolidated_days(self) -> list[str]:
        sql = f"select distinct day from messages where {WAITING} and {LEARNABLE} order by day"
        return [row["day"] for row in self.db.query(sql)]

    # --- "don't learn this" ---------------------------------------------------------
    def exclude(self, *, conversation_id: int | None = None, message_ids=(), undo: bool = False) -> list[int]:
        """Mark a conversation (its turns to come too) or single turns (a user turn with the replies
        that answer it) as never to be learned, or (`undo`) learnable again. Returns the ids of the
        turns a night already learned: those are in the weights, and only `dreamer forget` takes them out."""
        stamp = None if undo else self.now().isoformat()
        with self.write():
            if conversation_id is not None:
                self.conversation(conversation_id)
                ids = [r["id"] for r in self.db["messages"].rows_where("conversation_id = ?", [conversation_id])]
                self.db["conversations"].update(conversation_id, {"excluded_at": stamp})
                if undo:  # the conversation's own turns marked one by one come back too
                    self.db.execute("update messages set excluded_at = null where conversation_id = ?", [conversation_id])
            else:
                ids = list(message_ids)
                self.message_ids_exist(ids)
                ids += self._replies_to(ids)
                for pk in ids:
                    self.db["messages"].update(pk, {"excluded_at": stamp})
            return [r["id"] for r in self.db.query(
                f"select id from messages where id in ({','.join('?' * len(ids))}) and not {WAITING}", ids)] if ids else []

    def queue(self) -> list[dict]:
        """Tonight's queue as the user sees it: finished messages no active night has learned, oldest
        first, each with `excluded` (the user said "don't learn this": the night skips it)."""
        sql = f"""
            select m.id, m.conversation_id, m.role, m.content, m.day, c.title,
                   (m.excluded_at is not null or c.excluded_at is not null) as excluded,
                   m.excluded_at is not null as message_excluded, c.excluded_at is not null as conversation_excluded
            from messages m join conversations c on c.id = m.conversation_id  -- WAITING's column is messages' alone
            where {WAITING} and m.status = 'complete' and m.content != '' order by m.id
        """
        return list(self.db.query(sql))

    def _replies_to(self, ids: list[int]) -> list[int]:
        """The assistant messages answering these user turns (up to the conversation's next user turn):
        a reply may repeat what the user said ("Noted: your PIN is 4711"), so it goes with its turn."""
        replies = []
        for row in self.db["messages"].rows_where(f"id in ({','.join('?' * len(ids))}) and role = 'user'", ids):
            for later in self.db["messages"].rows_where("conversation_id = ? and id > ?", [row["conversation_id"], row["id"]],
                                                        order_by="id"):
                if later["role"] == "user":
                    break
                if later["id"] not in ids:
                    replies.append(later["id"])
        return replies

    def message_ids_exist(self, ids: list[int]) -> None:
        """StoreError naming the first id with no message."""
        found = {r["id"] for r in self.db["messages"].rows_where(f"id in ({','.join('?' * len(ids))})", ids)} \
            if ids else set()
        missing = [i for i in ids if i not in found]
        if missing:
            raise StoreError(f"no message with id {missing[0]}")

    def excluded(self, conversation_id: int) -> bool:
        return bool(self.conversation(conversation_id).get("excluded_at"))

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
        with self.write():
            self.db["sleep_runs"].update(run_id, {"report_seen_at": self.now().isoformat()})

    def state(self, key: str) -> str | None:
        """A value of the `state` table (e.g. `first_run_seen`), or None."""
        row = self.db["state"].rows_where("key = ?", [key])
        return next((r["value"] for r in row), None)

    def set_state(self, key: str, value: str) -> None:
        with self.write():
            self.db["state"].upsert({"key": key, "value": value}, pk="key")

    def active_adapters(self) -> list[dict]:
        return [self.localized(row) for row in self.db["adapters"].rows_where("status = 'active'", order_by="night")]

    def localized(self, adapter: dict) -> dict:
        """An adapter row whose files are this home's. A home copied or moved whole keeps rows naming
        the original's folders by absolute path; where this home holds the same folder (under its
        `adapters/`), that one is used, so a copy never reads (nor, forgetting, deletes) the original's."""
        root = self.path.parent / "adapters"
        row = dict(adapter)
        for key in ("path", "gguf_path"):
            stored = Path(row[key]) if row.get(key) else None
            if stored is None or root in stored.parents or "adapters" not in stored.parts[:-1]:
                continue
            parts = stored.parts
            inside = parts[len(parts) - 1 - parts[::-1].index("adapters") + 1:]  # after the last "adapters/"
            local = root.joinpath(*inside)
            if local.exists():
                row[key] = str(local)
        return row

    def memory_version(self) -> str:
        """What the status bar shows: the newest active night, or "none yet"."""
        active = self.active_adapters()
        return f"night {active[-1]['night']}" if active else "none yet"

    # --- bulk import ------------------------------------------------------------
    def import_conversations(self, records: Iterable[dict]) -> list[int]:
        """Insert parsed transcript records all at once: any failure imports nothing."""
        ids = []
        stamp = self.now().isoformat()
        with self.write():
            for record in records:
                pk = self.db["conversations"].insert(
                    {"title": record.get("title") or "", "day": record["day"], "created_at": stamp, "updated_at": stamp,
                     "excluded_at": None if record.get("learn", True) else stamp}
                ).last_pk
                self.db["messages"].insert_all(
                    {
                        "conversation_id": pk,
                        "role": m["role"],
                        "content": m["content"],
                        "created_at": stamp,
                        "day": record["day"],
                        "status": m.get("status", "complete"),
                        "writer_pid": None,
                        "consolidated_run_id": None,
                        "excluded_at": None if m.get("learn", True) else stamp,
                    }
                    for m in record["messages"]
                )
                ids.append(pk)
        return ids

    def close(self) -> None:
        self.db.close()


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; on a read-only disk SQLite cannot make the WAL index, so `immutable`."""
    if not path.is_file():
        raise StoreError(f"no database at {path}, and its directory is read-only: nothing to show")
    uri = path.resolve().as_uri()
    connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
    try:
        connection.execute("select count(*) from sqlite_master").fetchone()
        return connection
    except sqlite3.OperationalError:
        connection.close()
    # Nobody can write to a read-only disk, so nothing changes under the immutable reader.
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


def dumps(value) -> str:
    """JSON for the metrics/config columns."""
    return json.dumps(value, sort_keys=True, default=str)
