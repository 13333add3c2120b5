"""The nightly schedule: APScheduler 3 with its SQLite job store; the sleep runs in a child process.

    dreamer daemon                       # headless; logs to DREAMER_HOME/logs/daemon.log
    dreamer schedule                     # the next run and the last results
    scheduler_in_chat = true             # (config.toml) `dreamer chat` hosts the scheduler instead

One cron job at `sleep_time` (local time, default 03:00), kept in DREAMER_HOME/scheduler.db:
- misfire_grace_time=None: a night missed while the machine was off or suspended still runs
  when the scheduler next looks (APScheduler's default grace is 1 s, which would drop it), and
  coalesce=True makes three missed nights one sleep, not three.
- The job is added once and then kept: re-adding it at every start would recompute its next
  run from "now" and silently drop the missed night. It is rescheduled only if sleep_time changes.
- APScheduler waits on a monotonic clock, which stops while the machine is suspended; a wake-up
  every minute makes it compare with the wall clock again soon after a resume.

The job starts `python -m dreamer sleep --scheduled` as a detached process (dreamer.scheduler.nightly
applies the skip and wait rules there), so torch, the model and the GPU are released when it
ends and quitting a chat that hosts the scheduler never waits for, or kills, a sleep. One
scheduler per DREAMER_HOME (a lock); one sleep at a time whoever starts it (the sleep lock).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path

from storage.locks import lock_holder, pid_lock
from storage import Config
from storage.days import parse_boundary
from storage.paths import ensure_private_dir, make_private

JOB_ID = "nightly-sleep"
WAKE_SECONDS = 60.0
log = logging.getLogger("dreamer.scheduler.daemon")


class SchedulerBusy(RuntimeError):
    """Another daemon or chat already runs the scheduler for this DREAMER_HOME."""


def jobstore_path(home: Path) -> Path:
    return Path(home) / "scheduler.db"


def logs_dir(home: Path) -> Path:
    return ensure_private_dir(Path(home) / "logs")


def nightly_trigger(config: Config):
    from apscheduler.triggers.cron import CronTrigger

    moment = parse_boundary(config.sleep_time, "sleep_time")
    return CronTrigger(hour=moment.hour, minute=moment.minute)  # the machine's local time zone


def sleep_command() -> list[str]:
    return [sys.executable, "-m", "dreamer", "sleep", "--scheduled"]


def nightly_job(home: str) -> int:
    """The job: launch the scheduled sleep in its own session and log where its output goes."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = logs_dir(Path(home)) / f"sleep-{stamp}.log"
    with open(out, "ab") as handle:
        child = subprocess.Popen(sleep_command(), stdout=handle, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, "DREAMER_HOME": str(home)})
    log.info("nightly sleep started: pid %s, output in %s", child.pid, out)
    threading.Thread(target=reap, args=(child, Path(home)), name="dreamer-sleep-reaper", daemon=True).start()
    return child.pid


def reap(child: subprocess.Popen, home: Path) -> list[str]:
    """Wait for the sleep; if it was killed or crashed, repair what it left right away, so a running
    chat gets a night whose promotion committed before the kill, without waiting for the next start."""
    code = child.wait()
    if code == 0 or code == 130:  # done, or interrupted cleanly (it recorded that itself)
        return []
    from storage import Store
    from storage.paths import database_path
    from storage.recovery import reconcile

    try:
        store = Store(database_path(home))
        try:
            repairs = reconcile(store, home)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - logged; the next start repairs instead
        log.exception("nightly sleep (pid %s) ended with code %s; the repair failed", child.pid, code)
        return []
    log.warning("nightly sleep (pid %s) ended with code %s; repaired: %s", child.pid, code,
                "; ".join(repairs) or "nothing")
    return repairs


def build_scheduler(home: Path):
    """A BackgroundScheduler: `start` must return so the job can be checked before anything fires
    (a BlockingScheduler's start would block first); the daemon then waits on its own."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    ensure_private_dir(Path(home))
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{jobstore_path(home)}")},
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
    )


def ensure_job(scheduler, config: Config, home: Path):
    """Add the nightly job if missing; reschedule only if sleep_time changed (keeps a missed run)."""
    trigger = nightly_trigger(config)
    job = scheduler.get_job(JOB_ID)
    if job is None:
        return scheduler.add_job(nightly_job, trigger, args=[str(home)], id=JOB_ID, name="dreamer nightly sleep")
    if list(job.args) != [str(home)]:  # DREAMER_HOME moved: the job must point at the new one
        job = scheduler.modify_job(JOB_ID, args=[str(home)])
    if str(job.trigger) != str(trigger):
        log.info("sleep_time changed: %s -> %s", job.trigger, trigger)
        return scheduler.reschedule_job(JOB_ID, trigger=trigger)
    return job


def start(scheduler, config: Config, home: Path) -> threading.Event:
    """Start (paused, so nothing fires before the job is checked), then resume; returns a stop event."""
    scheduler.start(paused=True)
    make_private(jobstore_path(home))
    ensure_job(scheduler, config, home)
    scheduler.resume()
    stop = threading.Event()

    def wake() -> None:
        while not stop.wait(WAKE_SECONDS):
            scheduler.wakeup()  # re-read the wall clock: it may have jumped over a suspend

    threading.Thread(target=wake, name="dreamer-scheduler-wake", daemon=True).start()
    return stop


def scheduler_lock(home: Path):
    return pid_lock(Path(home) / "scheduler.lock",
                    lambda pid: SchedulerBusy(f"the scheduler already runs for this DREAMER_HOME (pid {pid})"))


def scheduler_holder(home: Path) -> int | None:
    """The pid running the scheduler, or None."""
    return lock_holder(Path(home) / "scheduler.lock")


def run_daemon(home: Path, config: Config) -> None:
    """`dreamer daemon`: the scheduler in the foreground until SIGTERM or Ctrl-C."""
    import signal

    handler = logging.FileHandler(logs_dir(home) / "daemon.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("dreamer", "apscheduler"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    with scheduler_lock(home):
        scheduler = build_scheduler(home)
        stop = start(scheduler, config, home)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        log.info("daemon started (pid %s): nightly sleep at %s, next run %s", os.getpid(), config.sleep_time,
                 scheduler.get_job(JOB_ID).next_run_time)
        try:
            while not stop.wait(1.0):  # a short wait, so Ctrl-C is handled promptly
                pass
        finally:
            stop.set()
            scheduler.shutdown(wait=False)
            log.info("daemon stopped")


@contextmanager
def hosted_scheduler(home: Path, config: Config):
    """For `dreamer chat`: run the scheduler in a background thread while the chat is open.

    Yields a one-line description for the user; if a daemon already runs it, the chat leaves it be.
    """
    try:
        with scheduler_lock(home):
            scheduler = build_scheduler(home)
            stop = start(scheduler, config, home)
            try:
                yield f"nightly sleep at {config.sleep_time}, scheduled by this chat"
            finally:
                stop.set()
                scheduler.shutdown(wait=False)
    except SchedulerBusy as err:
        yield f"{err}; this chat does not schedule"


def next_run(home: Path, config: Config) -> tuple[datetime | None, str]:
    """(next fire time, where it comes from) read from the job store without starting a scheduler."""
    path = jobstore_path(home)
    if path.exists():
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as connection:
            try:
                row = connection.execute("select next_run_time from apscheduler_jobs where id = ?", (JOB_ID,)).fetchone()
            except sqlite3.OperationalError:
                row = None
        if row and row[0] is not None:
            return datetime.fromtimestamp(row[0]).astimezone(), "job store"
    trigger = nightly_trigger(config)
    now = datetime.now().astimezone()
    return trigger.get_next_fire_time(None, now), "sleep_time (no scheduler has run yet)"
