"""The sleep's records in dreamer.db: runs, held-out probes, adapters, consolidation marks.

The only write that changes what the agent *is* happens in `promote`, in one transaction:
the new expert becomes active, the night's messages are marked consolidated by that run, and
the run itself is recorded `promoted`. A kill can land before that commit (nothing changed) or
after it (everything did), never between. Any other outcome (rejected, interrupted, failed) only
updates the run's own row, and only while it is still `running`, so a late interrupt cannot
overwrite a promotion; the conversations wait for the next night.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from storage import manifest
from storage.store import LEARNABLE, WAITING, Store, dumps


def unconsolidated(store: Store, day: str | None = None) -> list[dict]:
    """Conversations with turns waiting for sleep (only those turns), oldest first.

    Each: {"conversation_id", "title", "days", "messages": [{"id", "role", "content", "day"}]}.
    Only learnable turns (storage.store.LEARNABLE): a reply still being written waits for a later
    night; an unfinished reply and what the user excluded are never learned.
    """
    where = f"{WAITING} and {LEARNABLE}"
    args: list = []
    if day:
        where += " and day = ?"
        args.append(day)
    grouped: dict[int, dict] = {}
    for row in store.db["messages"].rows_where(where, args, order_by="id"):
        entry = grouped.setdefault(
            row["conversation_id"],
            {"conversation_id": row["conversation_id"], "title": store.conversation(row["conversation_id"])["title"],
             "days": [], "messages": []},
        )
        if row["day"] not in entry["days"]:
            entry["days"].append(row["day"])
        entry["messages"].append({k: row[k] for k in ("id", "role", "content", "day")})
    return list(grouped.values())


def start_run(store: Store, day: str, preset: str) -> int:
    with store.write():
        return store.db["sleep_runs"].insert(
            {"day": day, "started_at": store.now().isoformat(), "status": "running", "preset": preset,
             "pid": os.getpid()}
        ).last_pk


def finish_run(store: Store, run_id: int, status: str, *, reason: str = "", report: str = "", metrics=None) -> bool:
    """Record how a run ended; False (and nothing written) if it is no longer `running`."""
    with store.write():
        cursor = store.db.execute(
            "update sleep_runs set status = ?, finished_at = ?, reason = ?, report = ?, metrics = ? "
            "where id = ? and status = 'running'",
            [status, store.now().isoformat(), reason, report, dumps(metrics or {}), run_id])
        return cursor.rowcount == 1


def set_report(store: Store, run_id: int, report: str) -> None:
    with store.write():
        store.db["sleep_runs"].update(run_id, {"report": report})


def run(store: Store, run_id: int) -> dict:
    return store.db["sleep_runs"].get(run_id)


def runs(store: Store, limit: int = 20) -> list[dict]:
    return list(store.db["sleep_runs"].rows_where(order_by="id desc", limit=limit))


def finished_runs(store: Store, limit: int = 60) -> list[dict]:
    """The newest finished runs, oldest first, each with its metrics parsed."""
    rows = store.db["sleep_runs"].rows_where("finished_at is not null", order_by="id desc", limit=limit)
    return [{**row, "metrics": json.loads(row["metrics"] or "{}")} for row in reversed(list(rows))]


def save_probes(store: Store, run_id: int, probes: list[dict]) -> list[int]:
    """Insert the night's probes; their ids, in order."""
    with store.write():
        return [store.db["probes"].insert(
            {"run_id": run_id, "day": p["day"], "question": p["question"], "answer": p["answer"],
             "distractors": json.dumps(list(p["distractors"]), ensure_ascii=False), "kind": p.get("kind", "recall")}
        ).last_pk for p in probes]


def replay_probes(store: Store) -> list[dict]:
    """Probes of the nights whose expert is in the active stack: the old memories to keep."""
    sql = """
        select p.* from probes p join adapters a on a.run_id = p.run_id
        where a.status = 'active' order by p.id
    """
    return [{**row, "distractors": json.loads(row["distractors"])} for row in store.db.query(sql)]


def save_checks(store: Store, checks: list[dict], version: int | None = None) -> int:
    """Record what stack `version` (default: the active one) answers to the probes, each check naming
    its probe by `probe_id`. Returns how many."""
    version = active_version(store) if version is None else version
    stamp = store.now().isoformat()
    with store.write():
        store.db["probe_checks"].insert_all(
            {"probe_id": c["probe_id"], "version": version, "checked_at": stamp, "chosen": c["chosen"],
             "p_answer": round(float(c["p_answer"]), 4), "correct": int(bool(c["correct"]))} for c in checks)
    return len(checks)


def memory_facts(store: Store, dreams: bool = True) -> list[dict]:
    """Night by night (the active stack's), each probe with what the active memory answers now and what
    it answered right after its own night: the Memory screen and `dreamer memory --facts`.

    Each night: {"night", "day", "facts": [{"id", "question", "answer", "kind", "now", "first", "state"}],
    "dreams": [{"request", "reply"}: the night's rewarded dreams shown in its report, when it dreamed]},
    `now`/`first` a check ({"chosen", "p_answer", "correct", "version", "checked_at"}) or None, and
    `state` one of kept | fading | lost | not learned | not checked (see `fact_state`). `dreams=False`
    skips reading the runs' metrics (the status bar needs only the states)."""
    version = active_version(store)
    active = "select p.id from probes p join adapters a on a.run_id = p.run_id where a.status = 'active'"
    checks: dict[int, list[dict]] = {}
    for check in store.db.query(f"select * from probe_checks where probe_id in ({active}) order by id"):
        checks.setdefault(check["probe_id"], []).append(check)
    nights = []
    for adapter in store.active_adapters():
        facts = []
        for probe in store.db["probes"].rows_where("run_id = ? and kind != 'general'", [adapter["run_id"]], order_by="id"):
            history = checks.get(probe["id"], [])
            first = history[0] if history else None
            now = next((c for c in reversed(history) if c["version"] == version), None)
            facts.append({"id": probe["id"], "question": probe["question"], "answer": probe["answer"],
                          "kind": probe["kind"], "now": now, "first": first, "state": fact_state(first, now)})
        night = {"night": adapter["night"], "day": adapter["day"], "facts": facts, "dreams": []}
        if dreams:
            run = json.loads(store.db["sleep_runs"].get(adapter["run_id"])["metrics"] or "{}")
            night["dreams"] = [{"request": d["request"], "reply": d["reply"]}
                               for d in ((run.get("dreaming") or {}).get("examples") or {}).get("rewarded", [])]
        nights.append(night)
    return nights


FADING_DROP = 0.2  # the answer still wins, but the memory is this much less sure than right after its night


def fact_state(first: dict | None, now: dict | None) -> str:
    """kept: the answer still wins; fading: it wins with FADING_DROP less confidence than right after its
    night; lost: it won then and loses now; not learned: it lost right after its own night too."""
    if now is None:
        return "not checked"
    if now["correct"]:
        return "fading" if first and first["p_answer"] - now["p_answer"] >= FADING_DROP else "kept"
    return "lost" if first and first["correct"] else "not learned"


def adapters(store: Store, status: str | None = None) -> list[dict]:
    where, args = ("status = ?", [status]) if status else (None, None)
    return [
        {**row, "metrics": json.loads(row["metrics"] or "{}")}
        for row in map(store.localized, store.db["adapters"].rows_where(where, args, order_by="night"))
    ]


def set_gguf_path(store: Store, adapter_id: int, path: str) -> None:
    """A night's llama.cpp export was (re)written: `dreamer memory --export`, or a damaged one rebuilt."""
    with store.write():
        store.db["adapters"].update(adapter_id, {"gguf_path": path})


def next_night(store: Store) -> int:
    row = next(iter(store.db.query("select max(night) as n from adapters")), None)
    return (row["n"] or 0) + 1 if row else 1


def promote(store: Store, run_id: int, adapter: dict, message_ids: list[int], *, reason: str = "",
            report: str = "", metrics=None) -> int:
    """Activate the new expert (a new stack version), mark its messages consolidated and the run
    `promoted`, in one transaction. `adapter["night"]` must be the next night (the sleep lock
    keeps it so); a run that is no longer `running` is refused."""
    with store.write():
        if next_night(store) != adapter["night"]:
            raise RuntimeError(f"night {adapter['night']} is taken (the next night is {next_night(store)}): not promoted")
        if not finish_run(store, run_id, "promoted", reason=reason, report=report, metrics=metrics):
            raise RuntimeError(f"sleep run {run_id} is no longer running: not promoted")
        adapter_id = store.db["adapters"].insert(
            {**adapter, "run_id": run_id, "status": "active", "created_at": store.now().isoformat()}
        ).last_pk
        add_version(store, [row["night"] for row in adapters(store, "active")], f"night {adapter['night']} promoted")
        for start in range(0, len(message_ids), 500):  # SQLite's variable limit
            chunk = message_ids[start : start + 500]
            store.db.execute(
                f"update messages set consolidated_run_id = ? where id in ({','.join('?' * len(chunk))})",
                [run_id, *chunk],
            )
    return adapter_id


# --- stack versions ---------------------------------------------------------------------------
def versions(store: Store) -> list[dict]:
    """Every stack version, oldest first: {"id", "nights", "created_at", "reason"}; id 0 = the base."""
    rows = [{**row, "nights": json.loads(row["nights"])} for row in store.db["stack_versions"].rows_where(order_by="id")]
    return [{"id": 0, "nights": [], "parent": None, "created_at": "", "reason": "the base alone"}, *rows]


def active_version(store: Store) -> int:
    return int(store.state("active_version") or 0)


def _set_active_version(store: Store, version: int) -> None:
    store.set_state("active_version", str(version))


def activate(store: Store, version: int) -> dict:
    """Make stack `version` the active one, atomically; its nights' turns count as learned again."""
    known = {v["id"]: v for v in versions(store)}
    if version not in known:
        raise ValueError(f"no stack version {version}; known versions: {', '.join(map(str, known))}")
    nights = known[version]["nights"]
    gone = sorted(set(nights) & forgotten_nights(store))
    if gone:
        raise ValueError(f"stack version {version} holds night {gone[0]}, which was forgotten (`dreamer forget`): "
                         "it cannot come back")
    with store.write():
        store.db.execute("update adapters set status = 'retired' where status = 'active'")
        if nights:
            store.db.execute(f"update adapters set status = 'active' where night in ({','.join('?' * len(nights))})",
                             nights)
        _set_active_version(store, version)
    return known[version]


def forgotten_nights(store: Store) -> set[int]:
    return {row["night"] for row in store.db["adapters"].rows_where("status = 'forgotten'")}


def add_version(store: Store, nights: list[int], reason: str) -> int:
    """A new stack version of these nights, made the active one (inside the caller's transaction)."""
    with store.write():
        version = store.db["stack_versions"].insert(
            {"nights": json.dumps(nights), "parent": active_version(store), "created_at": store.now().isoformat(),
             "reason": reason}).last_pk
        _set_active_version(store, version)
    return version


def previous_version(store: Store) -> int:
    """The version the active one was built on (where `dreamer rollback` with no argument goes)."""
    current = active_version(store)
    if current == 0:
        raise ValueError("the active stack is already the base alone: nothing to roll back")
    return next(v["parent"] for v in versions(store) if v["id"] == current) or 0


def stack_manifest(store: Store, home: Path | None = None) -> dict:
    """The manifest the chat should load (storage.manifest), as the database and the folded
    models on disk say."""
    rows = adapters(store, "active")
    experts = [{"night": r["night"], "day": r["day"], "path": r["path"], "gguf_path": r["gguf_path"], "scale": 1.0}
               for r in rows]
    return {"version": active_version(store), "night": rows[-1]["night"] if rows else 0, "experts": experts,
            "served": manifest.served_entry(home, experts)}


# --- the scheduler's log ------------------------------------------------------------------------
def log_schedule_event(store: Store, event: str, detail: str = "", run_id: int | None = None) -> None:
    """event: started | skipped | waiting | gave-up | finished | failed (shown by `dreamer schedule`)."""
    with store.write():
        store.db["schedule_events"].insert({"at": store.now().isoformat(), "event": event, "detail": detail,
                                            "run_id": run_id})


def schedule_events(store: Store, limit: int = 10) -> list[dict]:
    return list(store.db["schedule_events"].rows_where(order_by="id desc", limit=limit))
