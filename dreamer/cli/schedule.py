"""`dreamer daemon` and `dreamer schedule`: when the agent sleeps.

    dreamer daemon                         # run the nightly scheduler (foreground; logs in DREAMER_HOME/logs)
    dreamer schedule                       # next run, who schedules, the last results
    dreamer schedule --install-systemd     # a user systemd timer instead of the daemon
"""

from __future__ import annotations

import click

from dreamer.cli.common import open_store
from dreamer.cli.errors import DreamerError
from storage import dreamer_home, ledger, load_config
from storage.words import count


@click.command()
def daemon() -> None:
    """Run the nightly sleep scheduler in the foreground (Ctrl-C or SIGTERM stops it)."""
    from dreamer.scheduler.daemon import SchedulerBusy, logs_dir, run_daemon

    config = load_config()
    home = dreamer_home()
    click.echo(f"dreamer daemon: nightly sleep at {config.sleep_time}; log in {logs_dir(home) / 'daemon.log'}")
    try:
        run_daemon(home, config)
    except SchedulerBusy as err:
        raise DreamerError(str(err)) from None
    except KeyboardInterrupt:
        click.echo("daemon stopped")


@click.command()
@click.option("--install-systemd", is_flag=True, help="write a user systemd service + timer (Persistent=true)")
def schedule(install_systemd: bool) -> None:
    """The next scheduled sleep, who runs the scheduler, and the last results."""
    from dreamer.scheduler.daemon import next_run, scheduler_holder
    from dreamer.scheduler.systemd import UNIT, install, unit_dir

    config = load_config()
    home = dreamer_home()
    if install_systemd:
        for path in install(home, config):
            click.echo(f"wrote {path}")
        click.echo(f"enable it with: systemctl --user daemon-reload && systemctl --user enable --now {UNIT}.timer\n"
                   "(use either the timer or `dreamer daemon`, not both: the second sleep would only be skipped)")
        return
    store = open_store(config)
    when, source = next_run(home, config)
    click.echo(f"nightly sleep: {config.sleep_time} local time, preset {config.sleep_preset}; waits until the chat "
               f"has been quiet {config.sleep_quiet_minutes} min (at most {config.sleep_max_wait_minutes} min)")
    click.echo(f"next run:      {when.strftime('%Y-%m-%d %H:%M %Z') if when else 'none'}  (from {source})")
    holder = scheduler_holder(home)
    timer = unit_dir() / f"{UNIT}.timer"
    runners = [f"scheduler running (pid {holder})"] if holder else ["no scheduler running: start `dreamer daemon`, "
                                                                    "or set scheduler_in_chat = true"]
    if timer.exists():
        runners.append(f"systemd timer file {timer}")
    click.echo("scheduled by:  " + "; ".join(runners))
    click.echo(f"waiting:       {count(store.unconsolidated_count(), 'message')} for the next sleep")
    events = ledger.schedule_events(store, 5)
    click.secho("\nlast scheduled runs", bold=True)
    if not events:
        click.echo("  none yet")
    for event in events:
        click.echo(f"  {event['at'][:16].replace('T', ' ')}  {event['event']:<9} {event['detail']}")
    last = store.last_sleep()
    if last:
        click.echo(f"\nlast sleep: #{last['id']} {last['status']} {last['started_at'][:16]}  {last['reason'] or ''}")
