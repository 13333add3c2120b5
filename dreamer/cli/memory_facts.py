"""`dreamer memory --facts` and `--check`: what the memory knows, night by night, and tonight's queue.

    dreamer memory --facts            # each night's facts: the answer, what the memory says now, how sure
    dreamer memory --facts --json     # the same for machines (the chat's Memory screen reads it in-process)
    dreamer memory --check            # re-measure them now on the active memory (dreamer.eval.memory_check)

The figures are cached checks (storage.ledger.memory_facts): printing them runs no model.
"""

from __future__ import annotations

import json

import click

from storage import Store, ledger
from storage.words import count

STATE_ORDER = ("lost", "fading", "kept", "not learned", "not checked")


def queue(store: Store) -> list[dict]:
    """Tonight's queue: the conversations with messages waiting for the next sleep (only those messages)."""
    return ledger.unconsolidated(store)


def facts_text(store: Store) -> list[str]:
    lines = []
    nights = ledger.memory_facts(store)
    if not nights:
        lines.append("no night in the memory yet: the first sleep that passes its gate learns the first facts")
    for night in nights:
        tally = ", ".join(f"{sum(f['state'] == s for f in night['facts'])} {s}" for s in STATE_ORDER
                          if any(f["state"] == s for f in night["facts"]))
        lines.append(f"night {night['night']}  {night['day']}  ({tally or 'no facts recorded'})")
        for fact in night["facts"]:
            lines.append(f"  {fact['state']:<11} {fact['question']}  ->  {fact['answer']}{describe_check(fact)}")
        for dream in night["dreams"]:
            lines.append(f"  dreamt      {dream['request']}  ->  {dream['reply'][:100]}")
    waiting = queue(store)
    messages = sum(len(c["messages"]) for c in waiting)
    lines.append(f"\ntonight's queue: {count(messages, 'message')} in {count(len(waiting), 'conversation')}")
    for conversation in waiting:
        lines.append(f"  #{conversation['conversation_id']} {conversation['title'] or '(untitled)'}: "
                     f"{count(len(conversation['messages']), 'message')}")
    return lines


def describe_check(fact: dict) -> str:
    now, first = fact["now"], fact["first"]
    if now is None:
        return "  (not checked on this memory: dreamer memory --check)"
    said = "" if now["correct"] else f"says {now['chosen']!r}, "
    then = f"; {first['p_answer']:.0%} after its night" if first and first["id"] != now["id"] else ""
    return f"  ({said}{now['p_answer']:.0%} sure of the answer{then})"


def show_facts(store: Store, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"nights": ledger.memory_facts(store), "queue": queue(store)}, indent=1,
                              ensure_ascii=False))
        return
    click.echo("\n".join(facts_text(store)))


def run_check(store: Store) -> None:
    """Re-measure every fact on the active memory, printing `checked i/n` as it goes (the chat reads these)."""
    from dreamer.eval.memory_check import check_active
    from storage import dreamer_home, load_config

    def progress(done: int, total: int) -> None:
        click.echo(f"checked {done}/{total}")

    saved = check_active(store, load_config(), dreamer_home(), on_progress=progress)
    click.echo(f"checked {count(saved, 'fact')} on stack v{ledger.active_version(store)}" if saved
               else "no facts to check: the memory holds no night")
