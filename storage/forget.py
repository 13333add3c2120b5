"""Forget on request: turns out of the database, and every night that learned them out of the memory.

    plan = plan_forget(store, conversations=[12], day=None, search=None)   # what would go, nothing written
    folders = apply_forget(store, plan, home)                                # one transaction

A night's expert cannot be edited to unlearn one conversation, but the nightly experts are
natural shards (as in SISA unlearning): a night learned from the conversations its
`metadata.json` lists (`conversation_ids`), and a later night trained while an earlier one was
active learned from it too (the earlier night's expert in its teacher, its probes in the
replay). So the plan drops the nights that learned from a forgotten conversation and every
night trained, directly or through another dropped night, while one of them was active. Their
other turns wait again and the next sleep learns them anew; their probes go (replay would
bring the facts back), and the morning reports and metrics of the dropped runs, and of any run
that slept on a forgotten turn's day, are scrubbed (they quote the day's facts).

`apply_forget` is one transaction: the turns (and the full-text index, by its triggers) deleted,
the conversations left empty deleted, the dropped nights marked `forgotten` (never activated
again: `ledger.activate` refuses a version that holds one), a new stack version without them,
the probes deleted, the reports scrubbed. A kill before the commit changes nothing. After it,
`complete_forget` deletes the dropped experts' folders and the folded models that hold them,
scrubs the logs and rewrites the manifest (the chat then applies what stays as adapters); if a
kill comes first, storage.recovery removes the same at the next start. Folding what stays
again is the caller's (`dreamer forget` does it; the chat leaves it to `dreamer memory --fold`,
which it starts, or to the next sleep), since storage does not fold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from storage import ledger
from storage.paths import adapters_dir
from storage.store import Store, StoreError
from storage.words import count

FORGOTTEN = "forgotten"


@dataclass
class ForgetPlan:
    messages: list[dict]  # the turns to delete
    conversations: list[int]  # every conversation a turn belongs to
    emptied: list[int]  # conversations with no turn left after: deleted too
    nights: list[dict] = field(default_factory=list)  # adapter rows of the nights to drop
    unknown: list[int] = field(default_factory=list)  # nights whose metadata could not be read: dropped to be safe
    requeued: int = 0  # turns of the dropped nights that stay and wait for the next sleep
    scrubbed_runs: list[int] = field(default_factory=list)

    @property
    def days(self) -> list[str]:
        return sorted({m["day"] for m in self.messages})


def plan_forget(store: Store, *, conversations: list[int] | None = None, day: str | None = None,
                search: str | None = None) -> ForgetPlan:
    """What forgetting these turns takes away; StoreError naming what does not exist."""
    if sum(x is not None and x != [] for x in (conversations, day, search)) != 1:
        raise StoreError("name one thing to forget: conversation ids, a day, or a search")
    if conversations:
        known = {row["id"] for row in store.db.query(
            f"select id from conversations where id in ({','.join('?' * len(conversations))})", conversations)}
        missing = [c for c in conversations if c not in known]
        if missing:
            raise StoreError(f"no conversation with id {missing[0]}: `dreamer log` lists them")
        messages = list(store.db.query(
            f"select * from messages where conversation_id in ({','.join('?' * len(conversations))}) order by id",
            conversations))
    elif day is not None:
        messages = list(store.db["messages"].rows_where("day = ?", [day], order_by="id"))
        if not messages:
            raise StoreError(f"nothing was said on {day}: `dreamer status` lists the days")
    else:
        messages = _matching(store, search or "")
        if not messages:
            raise StoreError(f"no turn matches {search!r}")
    touched = sorted({m["conversation_id"] for m in messages})
    gone = {m["id"] for m in messages}
    emptied = [c for c in touched
               if not any(r["id"] not in gone for r in store.db["messages"].rows_where("conversation_id = ?", [c]))]
    plan = ForgetPlan(messages, touched, emptied)
    _plan_nights(store, plan)
    return plan


def _matching(store: Store, search: str) -> list[dict]:
    """Turns that contain every word of `search` (full-text, any day)."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in search).split() if w]
    if not words:
        return []
    query = " AND ".join(f'"{w}"' for w in words)
    sql = "select m.* from messages m join messages_fts f on f.rowid = m.id where messages_fts match ? order by m.id"
    return list(store.db.query(sql, [query]))


def learned_from(row: dict) -> set[int] | None:
    """The conversations a night's expert learned from (its metadata.json), or None if unreadable."""
    try:
        ids = json.loads((Path(row["path"]) / "metadata.json").read_text(encoding="utf-8"))["conversation_ids"]
        return {int(i) for i in ids}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _plan_nights(store: Store, plan: ForgetPlan) -> None:
    rows = {r["night"]: r for r in ledger.adapters(store) if r["status"] != FORGOTTEN}
    forgotten = set(plan.conversations)
    dropped = set()
    for night, row in rows.items():
        learned = learned_from(row)
        if learned is None:
            plan.unknown.append(night)
            dropped.add(night)
        elif learned & forgotten:
            dropped.add(night)
    # A night trained while a dropped one was active learned from it: its version (made when it was
    # promoted) lists the nights it trained through.
    for version in ledger.versions(store)[1:]:
        if not version["nights"]:
            continue
        newest = max(version["nights"])
        if newest in rows and dropped & (set(version["nights"]) - {newest}):
            dropped.add(newest)
    plan.nights = [rows[n] for n in sorted(dropped) if n in rows]
    runs = [r["run_id"] for r in plan.nights]
    gone = {m["id"] for m in plan.messages}
    if runs:
        marks = ",".join("?" * len(runs))
        plan.requeued = sum(1 for m in store.db.query(
            f"select id from messages where consolidated_run_id in ({marks})", runs) if m["id"] not in gone)
    days = set(plan.days)
    plan.scrubbed_runs = sorted(set(runs) | {r["id"] for r in store.db["sleep_runs"].rows
                                             if r["day"] in days or days & set(_run_days(r))})


def _run_days(run: dict) -> list[str]:
    try:
        return list(json.loads(run["metrics"] or "{}").get("days") or [])
    except (ValueError, TypeError):
        return []


def apply_forget(store: Store, plan: ForgetPlan) -> list[Path]:
    """Do it, in one transaction; the folders of the dropped experts, for the caller to delete."""
    ids = [m["id"] for m in plan.messages]
    runs = [r["run_id"] for r in plan.nights]
    nights = {r["night"] for r in plan.nights}
    note = f"forgotten on {store.now().date()}: this night slept on turns that were forgotten"
    with store.write():
        for start in range(0, len(ids), 500):  # SQLite's variable limit
            chunk = ids[start:start + 500]
            store.db.execute(f"delete from messages where id in ({','.join('?' * len(chunk))})", chunk)
        for conversation in plan.emptied:
            store.db.execute("delete from conversations where id = ?", [conversation])
        if runs:
            marks = ",".join("?" * len(runs))
            store.db.execute(f"update messages set consolidated_run_id = null where consolidated_run_id in ({marks})",
                             runs)
            store.db.execute(f"delete from probe_checks where probe_id in (select id from probes where run_id in ({marks}))",
                             runs)
            store.db.execute(f"delete from probes where run_id in ({marks})", runs)
            active = [r["night"] for r in ledger.adapters(store, "active")]
            store.db.execute(f"update adapters set status = '{FORGOTTEN}', metrics = '{{}}' "
                             f"where run_id in ({marks})", runs)
            if nights & set(active):
                ledger.add_version(store, [n for n in active if n not in nights],
                                   f"forgot night{'s' if len(nights) > 1 else ''} {', '.join(map(str, sorted(nights)))}")
        for run_id in plan.scrubbed_runs:
            store.db["sleep_runs"].update(run_id, {"report": note, "metrics": "{}"})
    return [Path(r["path"]) for r in plan.nights]


def complete_forget(store: Store, home: Path, plan: ForgetPlan) -> str:
    """After the commit: the manifest rewritten first (a running chat drops the forgotten nights at
    its next poll: it applies what stays as adapters, or a kept fold of exactly those), then the
    dropped experts' folders and every folded model that holds one deleted, and the logs scrubbed.
    Safe to run again; storage.recovery does its part if a kill comes first. Returns what the
    logs lost, as a phrase ('' for nothing)."""
    import shutil

    from storage import manifest

    manifest.write_manifest(ledger.stack_manifest(store, home), home)
    root = adapters_dir(home).resolve()
    for row in plan.nights:
        folder = Path(row["path"]).resolve()
        if folder.parent == root:  # a copied home's rows may name the original's folders: never those
            shutil.rmtree(folder, ignore_errors=True)
    manifest.remove_folds_holding(home, {Path(r["path"]).name for r in plan.nights})
    return _scrub_logs(home, store, plan)


def describe(plan) -> list[str]:
    lines = [f"{count(len(plan.messages), 'message')} in {count(len(plan.conversations), 'conversation')} will be deleted:"]
    for message in plan.messages[:8]:
        text = " ".join(message["content"].split())
        lines.append(f"  #{message['conversation_id']} {message['day']} {message['role']}: "
                     f"{text[:70]}{'...' if len(text) > 70 else ''}")
    if len(plan.messages) > 8:
        lines.append(f"  ... and {len(plan.messages) - 8} more")
    if plan.nights:
        lines.append(f"The memory of night(s) {nights_of(plan)} goes with them (those nights learned from these "
                     "conversations, or trained on a night that did); their other "
                     f"{count(plan.requeued, 'message')} wait for the next sleep, which learns them again.")
        if plan.unknown:
            lines.append(f"Night(s) {', '.join(map(str, plan.unknown))}: what they learned from cannot be read "
                         "(metadata.json missing), so they go too.")
    else:
        lines.append("No night learned from them yet: only the messages go.")
    return lines


def nights_of(plan) -> str:
    return ", ".join(str(r["night"]) for r in plan.nights)



def _scrub_logs(home: Path, store: Store, plan: ForgetPlan) -> str:
    """Remove what the logs quote of the forgotten turns; one phrase, or ''."""
    logs = home / "logs"
    if not logs.is_dir():
        return ""
    removed = 0
    starts = [store.db["sleep_runs"].get(r)["started_at"] for r in plan.scrubbed_runs]
    if starts:
        since = datetime.fromisoformat(min(starts)).timestamp()
        for log in logs.glob("sleep-*.log"):
            if log.stat().st_mtime >= since:  # it may quote the morning report of a scrubbed night
                log.unlink()
                removed += 1
    needles = [" ".join(m["content"].split())[:60] for m in plan.messages if len(m["content"].strip()) >= 12]
    lines_out = 0
    for log in [*logs.glob("errors.log*"), *logs.glob("daemon.log*")]:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        kept = [line for line in lines if not any(needle in " ".join(line.split()) for needle in needles)]
        if len(kept) != len(lines):
            lines_out += 1
            log.write_text("".join(kept), encoding="utf-8")
    parts = [f"{removed} sleep log(s) removed"] if removed else []
    if lines_out:
        parts.append(f"lines quoting them removed from {lines_out} log(s)")
    return ", ".join(parts)
