"""`dreamer sleep` and `dreamer eval`: the sleep side of the command line.

torch and transformers are imported inside the commands, so `dreamer --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dreamer.cli.common import day_option, open_store
from dreamer.cli.errors import DreamerError
from storage import dreamer_home, load_config
from storage import ledger


def _open(write: bool = True):
    config = load_config()
    return config, open_store(config, write=write)


class RichPhases:
    """One rich progress bar per sleep phase, with ETA."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.current = None

    def phase(self, name: str, total: int | None = None):
        if self.current is not None:
            self.progress.update(self.current, completed=self.progress.tasks[self.current].total)
        self.progress.console.print(f"[bold]{name}[/bold]")  # also readable in a log without a terminal
        self.current = self.progress.add_task(name, total=total)
        task = self.current
        return lambda n=1: self.progress.advance(task, n)


@click.command()
@click.option("--now", is_flag=True, help="sleep now")
@click.option("--scheduled", is_flag=True,
              help="what the nightly job runs: skip if nothing waits, wait until the chat is quiet, then sleep")
@click.option("--day", help="consolidate only this day (YYYY-MM-DD); default: every waiting day")
@click.option("--preset", help="a preset name in assets/presets, a .toml path, or auto  [default: sleep_preset in "
                               "config.toml, auto = gpu-qlora on CUDA, else cpu-tiny]")
@click.option("--dreaming/--no-dreaming", default=None,
              help="run Dreaming (stage 2) after stage 1, or not  [default: `dreaming` in config.toml, else the preset]")
@click.option("--dry-run", is_flag=True, help="show what would be consolidated and the cost; train nothing")
def sleep(now: bool, scheduled: bool, day: str | None, preset: str | None, dreaming: bool | None, dry_run: bool) -> None:
    """Consolidate the day's conversations into a new LoRA expert."""
    from dreamer.sleep.outcome import SleepInterrupted
    from dreamer.sleep.night import sleep_now
    from dreamer.sleep.config import load_preset, with_dreaming

    if now == scheduled:
        raise DreamerError("say when: `dreamer sleep --now`, or `--scheduled` (what the nightly job runs)")
    if scheduled and (day or dry_run):
        raise DreamerError("--scheduled consolidates every waiting day; --day and --dry-run go with --now")
    config, store = _open()
    cfg = with_dreaming(load_preset(preset or config.sleep_preset), config.dreaming if dreaming is None else dreaming)
    day = day_option(day)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description:<26}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    try:
        with Progress(*columns, transient=False) as progress:
            if scheduled:
                from dreamer.scheduler.nightly import run_scheduled

                outcome = run_scheduled(store, config, cfg, dreamer_home(), progress=RichPhases(progress))
                if outcome is None:
                    event = ledger.schedule_events(store, 1)[0]
                    click.echo(f"scheduled sleep {event['event']}: {event['detail']}")
                    return
            else:
                outcome = sleep_now(store, config, cfg, day=day, dry_run=dry_run, progress=RichPhases(progress),
                                    home=dreamer_home())
    except SleepInterrupted as err:
        click.echo(str(err), err=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # before the night started
        click.echo("sleep interrupted before it started: nothing changed", err=True)
        raise SystemExit(130) from None
    # Any other error was recorded as failed in sleep_runs and goes to the CLI's one error path.
    for repair in outcome.repairs:
        click.echo(f"repaired: {repair}", err=True)
    if outcome.report:
        click.echo(outcome.report)
    click.echo(outcome.message)


@click.command(name="eval")
@click.option("--probes", "probes_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--stack", default="active", show_default=True, help="active, none (the base), or a stack version V (see `dreamer memory`)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--no-generate", is_flag=True, help="multiple choice only (faster)")
def eval_(probes_path: Path, stack: str, as_json: bool, no_generate: bool) -> None:
    """Closed-book evaluation of the memory on a probes file."""
    from dreamer.eval.probes import read_probes
    from dreamer.morning.stack import damaged, peft_problem

    probes = read_probes(probes_path)
    config, store = _open()
    versions = {str(v["id"]): v["nights"] for v in ledger.versions(store)}
    if stack == "none":
        nights = []
    elif stack == "active":
        nights = versions[str(ledger.active_version(store))]
    elif stack in versions:
        nights = versions[stack]
    else:
        raise DreamerError(f"--stack must be active, none or a stack version (see `dreamer memory`); "
                           f"known versions: {', '.join(versions)}")
    chosen = [r for r in ledger.adapters(store) if r["night"] in nights]
    gone = [r["night"] for r in chosen if r["status"] == "forgotten"]
    if gone:
        raise DreamerError(f"stack version {stack} holds night {gone[0]}, which was forgotten (`dreamer forget`)")
    for row in chosen:  # a damaged expert is named, with the fix, not shown as a safetensors traceback
        problem = peft_problem(Path(row["path"]))
        if problem:
            raise damaged(store, row, problem)
    from dreamer.eval.evaluate import evaluate, format_table
    from dreamer.sleep.config import LoadConfig
    from dreamer.lm.weights import build_stack, load_base, plan_device, training_source
    from storage.paths import cache_dir

    base, tokenizer = load_base(training_source(config.train_model, cache_dir(dreamer_home()), config.model_path()), plan_device(LoadConfig()))
    model = build_stack(base, [Path(r["path"]) for r in chosen], None)
    result = evaluate(model, tokenizer, probes, generate=not no_generate)
    result["stack"] = [r["night"] for r in chosen]
    click.echo(json.dumps(result, indent=2, ensure_ascii=False) if as_json else format_table(result))
