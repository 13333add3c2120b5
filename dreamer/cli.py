"""The `dreamer` command line.

    dreamer chat                       # the chat UI on the configured (or embedded) model
    dreamer status                     # paths, model, counts per day, turns waiting for sleep
    dreamer log [--day D]              # print conversations
    dreamer import FILE.jsonl          # add conversations (all or nothing)
    dreamer export FILE.jsonl [--day D]
    dreamer sleep --now [--day D] [--preset P] [--dry-run]   # consolidate into a new LoRA expert
    dreamer eval --probes FILE.jsonl [--stack VERSION|none] [--json]
    dreamer memory [--export]          # the adapter stack, its versions and the sleep runs
    dreamer rollback [VERSION]         # re-activate an earlier stack (the chat swaps to it)
    dreamer daemon                     # the nightly scheduler (or scheduler_in_chat = true)
    dreamer schedule [--install-systemd]

Heavy modules (torch, transformers, llama_cpp, textual) are imported inside the commands
that need them, so `dreamer --help` stays fast. Every error becomes one clean line on stderr
and exit code 1; its traceback goes to DREAMER_HOME/logs/errors.log (dreamer.cli_errors).
Every command opens the database through `open_store`, which first repairs what a killed
sleep left (storage.recovery); the commands that only read also work on a read-only home.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from storage import Config, Store, dreamer_home, load_config
from storage.days import parse_day
from storage.paths import config_path, database_path
from dreamer.cli_errors import DreamerGroup


def open_store(config: Config, *, write: bool = True) -> Store:
    """The database, repaired first; a command that only reads (`write=False`) also opens a read-only home."""
    from storage.recovery import reconcile

    home = dreamer_home()
    if not write and home.is_dir() and not os.access(home, os.W_OK):
        click.echo(f"note: {home} is read-only: showing what is there; nothing can be written", err=True)
        return Store(database_path(home), boundary=config.boundary, readonly=True)
    store = Store(database_path(home), boundary=config.boundary)
    for repair in reconcile(store, home):
        click.echo(f"repaired: {repair}", err=True)
    return store


def _day_option(value: str | None) -> str | None:
    return str(parse_day(value)) if value else None


@click.group(cls=DreamerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dreamer")
def cli() -> None:
    """dreamer: a personal chat agent that learns while it sleeps.

    Data lives in DREAMER_HOME (default ~/.local/share/dreamer).
    """


@cli.command()
@click.option("--runtime", "runtime_name", type=click.Choice(["llama", "transformers"]),
              help="llama.cpp on the GGUF model, or transformers on train_model with the PEFT stack "
                   "[default: chat_runtime in config.toml, llama]")
def chat(runtime_name: str | None) -> None:
    """Chat in the terminal; every turn is kept for tonight's sleep."""
    from agent.session import ChatSession
    from agent.tui import run_chat

    config = load_config()
    store = open_store(config)
    if (runtime_name or config.chat_runtime) == "transformers":
        from dreamer.hf_runtime import TransformersRuntime
        from dreamer.weights import training_source
        from storage.paths import cache_dir

        click.echo("loading the model with transformers (the first time, the embedded GGUF is dequantized: ~30 s)")
        runtime = TransformersRuntime(training_source(config.train_model, cache_dir(dreamer_home())))
    else:
        from agent.llama_runtime import LlamaRuntime

        runtime = LlamaRuntime.from_config(config)
    session = ChatSession(store, runtime, config, model_name=runtime.name)
    session.resume_latest()
    if not config.scheduler_in_chat:
        run_chat(session)
        return
    from dreamer.scheduler import hosted_scheduler

    with hosted_scheduler(dreamer_home(), config) as note:
        click.echo(note)
        run_chat(session)


@cli.command()
def status() -> None:
    """Paths, model, messages per day and what waits for the next sleep."""
    from agent.models import ModelError, resolve_chat_model

    config = load_config()
    store = open_store(config, write=False)
    home = dreamer_home()
    try:
        model_path, model_name = resolve_chat_model(config.model_path())
        model = f"{model_name} ({model_path})"
    except ModelError as err:
        model = f"unusable: {err}"
    click.echo(f"home:     {home}")
    click.echo(f"database: {store.path}")
    click.echo(f"config:   {config_path(home)}{'' if config_path(home).exists() else ' (not created; defaults)'}")
    click.echo(f"model:    {model}")
    click.echo(f"day:      {store.today()} (days start at {config.day_boundary})")
    click.echo(f"memory:   {store.memory_version()}")
    last = store.last_sleep()
    if last is None:
        click.echo("last sleep: never")
    else:
        pid = f" (pid {last['pid']})" if last["status"] == "running" and last.get("pid") else ""
        click.echo(f"last sleep: {last['status']}{pid} {last['started_at']}")
    counts = store.day_counts()
    if not counts:
        click.echo("no conversations yet: run `dreamer chat`")
        return
    click.echo("\nday          messages  waiting for sleep")
    for row in counts:
        click.echo(f"{row['day']}  {row['messages']:>8}  {row['unconsolidated']:>17}")
    click.echo(f"\n{store.unconsolidated_count()} turns not yet consolidated")


@cli.command()
@click.option("--day", help="only this day (YYYY-MM-DD)")
def log(day: str | None) -> None:
    """Print conversations, oldest first."""
    config = load_config()
    store = open_store(config, write=False)
    conversations = list(reversed(store.conversations(limit=-1, day=_day_option(day))))
    if not conversations:
        click.echo("no conversations" + (f" on {day}" if day else ""))
        return
    for conversation in conversations:
        click.secho(f"# {conversation['day']}  #{conversation['id']}  {conversation['title'] or '(untitled)'}", bold=True)
        for message in store.messages(conversation["id"]):
            mark = "" if message["status"] == "complete" else f" [{message['status']}]"
            click.echo(f"{message['role']}{mark}: {message['content']}")
        click.echo("")


@cli.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_(file: Path) -> None:
    """Import conversations from JSON Lines (nothing is imported if any line is bad)."""
    from storage.transcripts import import_file

    ids = import_file(open_store(load_config()), file)
    click.echo(f"imported {len(ids)} conversations from {file}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--day", help="only this day (YYYY-MM-DD)")
def export(file: Path, day: str | None) -> None:
    """Export conversations as JSON Lines (the import format)."""
    from storage.transcripts import export_file

    count = export_file(open_store(load_config(), write=False), file, _day_option(day))
    click.echo(f"exported {count} conversations to {file}")


from dreamer.commands_sleep import eval_, sleep  # noqa: E402  (registered below)
from dreamer.commands_stack import memory, rollback  # noqa: E402
from dreamer.commands_schedule import daemon, schedule  # noqa: E402

cli.add_command(sleep)
cli.add_command(eval_)
cli.add_command(memory)
cli.add_command(rollback)
cli.add_command(daemon)
cli.add_command(schedule)


def main() -> None:
    os.umask(0o077)  # every file dreamer writes (experts, exports, logs) is the user's alone
    cli()
