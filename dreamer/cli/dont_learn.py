"""`dreamer dont-learn`: keep a conversation or single turns in the log, out of every night.

    dreamer dont-learn 12              # conversation 12, and whatever is said in it later
    dreamer dont-learn --turn 431      # one message (ids: `dreamer log --ids`)
    dreamer dont-learn 12 --undo       # learnable again from the next night on

The mark lives in the database (storage.store.Store.exclude); every night collects only
learnable turns (storage.store.LEARNABLE). A turn a night has learned already stays in the
weights: the command says so, and `dreamer forget` is what takes it out.
"""

from __future__ import annotations

import click

from dreamer.cli.common import open_store
from dreamer.cli.errors import DreamerError
from storage import load_config


@click.command("dont-learn")
@click.argument("conversations", type=int, nargs=-1)
@click.option("--turn", "turns", type=int, multiple=True, help="one message by id (repeatable)")
@click.option("--undo", is_flag=True, help="make them learnable again")
def dont_learn(conversations: tuple[int, ...], turns: tuple[int, ...], undo: bool) -> None:
    """Keep conversations (by id) or single turns (--turn) out of every night; --undo lets them be learned."""
    from storage.store import StoreError

    if not conversations and not turns:
        raise DreamerError("name a conversation id or --turn ID (`dreamer log --ids` shows them)")
    store = open_store(load_config())
    learned: list[int] = []
    try:
        for conversation_id in conversations:
            store.conversation(conversation_id)  # all named ids exist, or nothing changes
        store.message_ids_exist(list(turns))
        for conversation_id in conversations:
            learned += store.exclude(conversation_id=conversation_id, undo=undo)
        if turns:
            learned += store.exclude(message_ids=list(turns), undo=undo)
    except StoreError as err:
        raise DreamerError(str(err)) from None
    what = ", ".join([*(f"conversation {c}" for c in conversations), *(f"message {t}" for t in turns)])
    if undo:
        click.echo(f"{what}: learnable again; the next sleep learns what of it is waiting")
        return
    click.echo(f"{what}: no night will learn it; it stays in the log")
    if learned:
        click.echo(f"{len(learned)} of these messages were learned already (they are in the memory): "
                   "`dreamer forget` takes them out")
