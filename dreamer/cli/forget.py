"""`dreamer forget`: turns out of the database, and the nights that learned them out of the memory.

    dreamer forget 12 15              # conversations by id (`dreamer log` shows them)
    dreamer forget --day 2026-11-21   # everything said that day
    dreamer forget --search "Lisbon"  # the turns that contain every word
    ... --yes                         # without the confirmation

What goes is listed first and asked for (storage.forget plans it): the turns, and every night
whose expert learned from their conversations or trained on top of one that did; those nights'
other turns wait for the next sleep, which learns them again. Then, under the sleep lock (never
beside a sleep), one transaction (storage.forget.apply_forget), the dropped experts' folders
deleted, the active stack folded again for the chat (dreamer.morning.fold) and the manifest
rewritten: a running chat swaps to the memory without them between replies. What the logs held
of the forgotten days goes too: the sleep logs written since the first scrubbed night, and the
lines of errors.log and daemon.log that quote a forgotten turn. A backup or an export made before
still holds them (the README says so).
"""

from __future__ import annotations

from pathlib import Path

import click

from dreamer.cli.common import day_option, open_store
from dreamer.cli.errors import DreamerError
from storage import dreamer_home, load_config
from storage.paths import adapters_dir
from storage.words import count

LOCK_WAIT_SECONDS = 2.0


@click.command()
@click.argument("conversations", type=int, nargs=-1)
@click.option("--day", help="forget everything said that day (YYYY-MM-DD)")
@click.option("--search", help="forget the turns that contain every word of this text")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def forget(conversations: tuple[int, ...], day: str | None, search: str | None, yes: bool) -> None:
    """Delete conversations (by id), a day or the turns matching a search, and re-make what learned them."""
    from dreamer.sleep.lock import sleep_lock
    from storage.forget import apply_forget, complete_forget, describe, nights_of, plan_forget
    from storage.store import StoreError

    config = load_config()
    store = open_store(config)
    home = dreamer_home()
    with sleep_lock(home, wait=LOCK_WAIT_SECONDS):  # a sleep collects and promotes turns: never beside one
        try:
            plan = plan_forget(store, conversations=list(conversations) or None, day=day_option(day), search=search)
        except StoreError as err:
            raise DreamerError(str(err)) from None
        click.echo("\n".join(describe(plan)))
        if not yes:
            click.confirm("Forget all this?", abort=True)
        apply_forget(store, plan)
        scrubbed = complete_forget(store, home, plan)
        served = _serve_the_rest(store, home, config)
    click.echo(f"forgotten: {count(len(plan.messages), 'message')}" + (f", nights {nights_of(plan)}" if plan.nights else "")
               + f"; {served}" + (f"; {scrubbed}" if scrubbed else "")
               + (f"; waiting for the next sleep: {count(plan.requeued, 'message')}" if plan.requeued else ""))


def _serve_the_rest(store, home: Path, config) -> str:
    """Fold what stays for the chat and rewrite the manifest; one phrase for the summary."""
    from dreamer.morning.export_gguf import ExportError
    from dreamer.morning.fold import FoldError, ensure_folded, remove_stale
    from dreamer.morning.stack import active_paths, write_manifest

    paths = [str(p) for p in active_paths(store)]
    note = f"the chat now serves {len(paths)} night(s)" if paths else "the chat now serves the base model"
    try:
        ensure_folded(home, config, paths)
    except (FoldError, ExportError, OSError, ValueError) as err:
        note += f" as adapters (folding failed: {err}; `dreamer memory --fold` tries again)"
    write_manifest(store, adapters_dir(home))
    remove_stale(home, keep=[paths])
    return note


