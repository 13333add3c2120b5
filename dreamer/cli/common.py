"""What every command shares: the database opened (and repaired) the one way, and the --day option.

    store = open_store(load_config())             # a command that writes
    store = open_store(load_config(), write=False)  # one that only reads: a read-only home works too
"""

from __future__ import annotations

import os

import click

from storage import Config, Store, StoreError, dreamer_home
from storage.days import parse_day
from storage.paths import database_path


def open_store(config: Config, *, write: bool = True) -> Store:
    """The database, repaired first; a command that only reads (`write=False`) also opens a read-only home."""
    from storage.recovery import reconcile

    home = dreamer_home()
    if not write and home.is_dir() and not os.access(home, os.W_OK):
        click.echo(f"note: {home} is read-only: showing what is there; nothing can be written", err=True)
        return Store(database_path(home), boundary=config.boundary, readonly=True)
    store = Store(database_path(home), boundary=config.boundary)
    try:
        repairs = reconcile(store, home)
    except (StoreError, OSError) as err:  # a full disk: the command may still read; the next start repairs
        click.echo(f"note: what a killed sleep left could not be repaired now ({err})", err=True)
        repairs = []
    for repair in repairs:
        click.echo(f"repaired: {repair}", err=True)
    return store


def day_option(value: str | None) -> str | None:
    return str(parse_day(value)) if value else None
