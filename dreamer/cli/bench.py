"""`dreamer bench`: the continual-learning benchmark (dreamer.bench.run), with progress and a report.

torch is imported only by the processes the bench starts, so `dreamer --help` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from dreamer.cli.errors import DreamerError


class BenchProgress:
    """A rich bar per arm (its nights) with ETA, and one line per unit for a log without a terminal."""

    def __init__(self, progress) -> None:
        self.progress, self.tasks = progress, {}

    def start(self, run, todo: list[tuple[int, str]]) -> None:
        nights = len(run.result["days"])
        for arm in run.bench.arms:
            left = sum(1 for _, a in todo if a == arm)
            self.tasks[arm] = self.progress.add_task(arm, total=nights, completed=nights - left)

    def working(self, arm: str, night: int, what: str) -> None:
        self.progress.update(self.tasks[arm], description=f"{arm}: night {night}, {what}")
        self.progress.console.print(f"[{time.strftime('%H:%M:%S')}] {arm} night {night}: {what}")

    def done(self, arm: str, night: int) -> None:
        self.progress.update(self.tasks[arm], description=arm)
        self.progress.advance(self.tasks[arm])


@click.command()
@click.option("--days", type=int, help="synthetic days, one night each  [default: 3]")
@click.option("--facts", type=int, help="facts told a day  [default: 10]")
@click.option("--updates", type=int, help="facts a day updates from an earlier day (0: a retention run)  [default: 2]")
@click.option("--arms", help="comma-separated: base,context,recall,naive,distill,sleep,dream  [default: all]")
@click.option("--preset", help="the sleep preset every training arm uses  [default: cpu-tiny]")
@click.option("--seed", type=int, help="draws the synthetic days (and the nights, unless --night-seed)  [default: 0]")
@click.option("--night-seed", type=int, help="the nights' own randomness (same days, another night)")
@click.option("--data", type=click.Path(path_type=Path), help="your conversations (dreamer import's format)")
@click.option("--probes", type=click.Path(path_type=Path), help="your probes (dreamer eval's format), with --data")
@click.option("--model", help="training model folder  [default: train_model in config.toml, or the embedded model]")
@click.option("--quick", is_flag=True, help="the whole pipeline on the tests' tiny model in about a minute (a smoke "
                                            "test, not a result)")
@click.option("--out", type=click.Path(path_type=Path), help="the run folder  [default: ./bench-<date>-<time>]")
@click.option("--resume", type=click.Path(path_type=Path), help="continue the run in this folder")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="arms run side by side (one process each; on a CPU, one core each)")
def bench(days, facts, updates, arms, preset, seed, night_seed, data, probes, model, quick, out, resume, jobs) -> None:
    """Give the same days to every kind of memory and score each the way the chat asks.

    Writes DIR/bench.json (every result), DIR/report.md and DIR/plots/*.png. A night is ~30 min
    on 2 CPU cores: stop any time, then `dreamer bench --resume DIR`.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from dreamer.bench.report import markdown, plots
    from dreamer.bench.run import BenchConfig, Run, run_bench

    given = {k: v for k, v in dict(days=days, facts=facts, updates=updates, arms=arms, preset=preset, seed=seed, night_seed=night_seed,
                                   data=data, probes=probes, model=model, out=out).items() if v is not None}
    if resume:
        if given or quick:
            raise DreamerError(f"--resume takes the run's options from {resume / 'bench.json'}; drop "
                               + ", ".join(f"--{k.replace('_', '-')}" for k in [*given, *(['quick'] if quick else [])]))
        run = Run.open(resume)
    else:
        for name, path in (("--data", data), ("--probes", probes)):
            if path is not None and not path.is_file():
                raise DreamerError(f"{name} {path}: no such file")
        config = BenchConfig(**{k: v for k, v in dict(
            days=days, facts=facts, updates=updates, preset=preset, seed=seed, night_seed=night_seed, quick=quick, model=model,
            arms=[a.strip() for a in arms.split(",") if a.strip()] if arms is not None else None,
            data=str(data) if data else None, probes=str(probes) if probes else None).items() if v is not None})
        if quick:
            config.days, config.facts = min(config.days, 2), min(config.facts, 4)
        run = Run.create(out or Path(f"bench-{time.strftime('%Y%m%d-%H%M%S')}"), config)
        click.echo(f"run folder: {run.folder} (continue with: dreamer bench --resume {run.folder})")
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TextColumn("nights"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    try:
        with Progress(*columns) as progress:
            run_bench(run, BenchProgress(progress), jobs=jobs)
    finally:  # a stopped run still gets the report of what it finished
        (run.folder / "report.md").write_text(markdown(run.result), encoding="utf-8")
        plots(run.result, run.folder / "plots")
    click.echo((run.folder / "report.md").read_text(encoding="utf-8").split("\n\n## ")[0])
    click.echo(f"\nreport: {run.folder / 'report.md'}; plots: {run.folder / 'plots'}; results: {run.folder / 'bench.json'}")
