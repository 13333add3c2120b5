"""`dreamer chat`, `status`, `log`, `import` and `export`: the day side of the command line.

    dreamer chat [--runtime llama|transformers] [-m PATH.gguf]
    dreamer status
    dreamer log [--day D] [--ids]
    dreamer import FILE.jsonl
    dreamer export FILE.jsonl [--day D]
"""

from __future__ import annotations

from pathlib import Path

import click

from dreamer.cli.common import day_option, open_store
from storage import dreamer_home, load_config
from storage.paths import config_path
from storage.words import count


@click.command()
@click.option("--runtime", "runtime_name", type=click.Choice(["llama", "transformers"]),
              help="llama.cpp on the GGUF model, or transformers on train_model with the PEFT stack "
                   "[default: chat_runtime in config.toml, llama]")
@click.option("-m", "--model", "model_file", type=click.Path(dir_okay=False, path_type=Path),
              help="chat on this GGUF this once (config.toml unchanged; `dreamer model use` changes it)")
def chat(runtime_name: str | None, model_file: Path | None) -> None:
    """Chat in the terminal; every turn is kept for tonight's sleep."""
    import dataclasses

    from agent.session import ChatSession
    from agent.tui import run_chat

    config = load_config()
    store = open_store(config)
    if model_file is not None:
        chosen = model_file.expanduser().resolve()
        if not chosen.is_file():
            raise click.ClickException(f"{model_file}: no such file")
        if store.active_adapters() and chosen != (config.model_path() or Path()).expanduser().resolve():
            raise click.ClickException(
                f"the memory's nights were trained on the configured model and cannot be applied to {chosen.name}: "
                "chat on it after `dreamer rollback 0` (the base alone), or without -m")
        config = dataclasses.replace(config, model=str(chosen))
    if (runtime_name or config.chat_runtime) == "transformers":
        from dreamer.morning.hf_runtime import TransformersRuntime
        from dreamer.lm.weights import training_source
        from storage.paths import cache_dir

        click.echo("loading the model with transformers (the first time, the embedded GGUF is dequantized: ~30 s)")
        runtime = TransformersRuntime(training_source(config.train_model, cache_dir(dreamer_home()), config.model_path()))
    else:
        from agent.llama_runtime import LlamaRuntime

        runtime = LlamaRuntime.from_config(config)
    session = ChatSession(store, runtime, config, model_name=runtime.name)
    session.resume_latest()
    if not config.scheduler_in_chat:
        run_chat(session)
        return
    from dreamer.scheduler.daemon import hosted_scheduler

    with hosted_scheduler(dreamer_home(), config) as note:
        click.echo(note)
        run_chat(session)


@click.command()
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
    from agent.session import facts_kept
    from dreamer.scheduler.daemon import next_run

    kept, checked = facts_kept(store)
    facts = f", {kept} of {checked} facts kept (dreamer memory --facts)" if checked else ""
    click.echo(f"memory:   {store.memory_version()}{facts}")
    last = store.last_sleep()
    if last is None:
        click.echo("last sleep: never")
    else:
        pid = f" (pid {last['pid']})" if last["status"] == "running" and last.get("pid") else ""
        why = f": {last['reason']}" if last["status"] != "promoted" and last.get("reason") else ""
        click.echo(f"last sleep: {last['status']}{pid} {last['started_at'][:16].replace('T', ' ')}{why}")
    when, source = next_run(home, config)
    click.echo(f"next sleep: {when.strftime('%Y-%m-%d %H:%M') if when else 'none'} ({source}; `dreamer schedule`)")
    counts = store.day_counts()
    if not counts:
        click.echo("no conversations yet: run `dreamer chat`")
        return
    click.echo("\nday          messages  waiting for sleep")
    for row in counts:
        click.echo(f"{row['day']}  {row['messages']:>8}  {row['unconsolidated']:>17}")
    click.echo(f"\nwaiting for the next sleep: {count(store.unconsolidated_count(), 'message')}")


@click.command()
@click.option("--day", help="only this day (YYYY-MM-DD)")
@click.option("--ids", is_flag=True, help="each message's id (for `dreamer dont-learn --turn ID`)")
def log(day: str | None, ids: bool) -> None:
    """Print conversations, oldest first."""
    config = load_config()
    store = open_store(config, write=False)
    conversations = list(reversed(store.conversations(limit=-1, day=day_option(day))))
    if not conversations:
        click.echo("no conversations" + (f" on {day}" if day else ""))
        return
    for conversation in conversations:
        kept_out = " [don't learn]" if conversation.get("excluded_at") else ""
        click.secho(f"# {conversation['day']}  #{conversation['id']}  {conversation['title'] or '(untitled)'}{kept_out}",
                    bold=True)
        for message in store.messages(conversation["id"]):
            marks = [] if message["status"] == "complete" else [message["status"]]
            marks += ["don't learn"] if message.get("excluded_at") else []
            mark = f" [{', '.join(marks)}]" if marks else ""
            number = f"{message['id']:>5} " if ids else ""
            click.echo(f"{number}{message['role']}{mark}: {message['content']}")
        click.echo("")


@click.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_(file: Path) -> None:
    """Import conversations from JSON Lines (nothing is imported if any line is bad)."""
    from storage.transcripts import import_file

    ids = import_file(open_store(load_config()), file)
    click.echo(f"imported {count(len(ids), 'conversation')} from {file}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--day", help="only this day (YYYY-MM-DD)")
def export(file: Path, day: str | None) -> None:
    """Export conversations as JSON Lines (the import format)."""
    from storage.transcripts import export_file

    exported = export_file(open_store(load_config(), write=False), file, day_option(day))
    click.echo(f"exported {count(exported, 'conversation')} to {file}")
