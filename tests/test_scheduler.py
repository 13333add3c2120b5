"""The nightly schedule: catch-up of missed nights, one scheduler and one sleep at a time,
the skip/wait rules, the real subprocess launch, and the systemd units."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest

from dreamer.scheduler import daemon as nightly_scheduler
from dreamer.scheduler.nightly import run_scheduled
from dreamer.scheduler.daemon import JOB_ID, SchedulerBusy, build_scheduler, ensure_job, hosted_scheduler, scheduler_lock
from dreamer.sleep.outcome import SleepOutcome
from dreamer.sleep.lock import sleep_lock
from dreamer.scheduler.systemd import install
from storage import Config, ledger


class FakePopen:
    calls: list = []

    def __init__(self, command, **kwargs) -> None:
        FakePopen.calls.append((command, kwargs))
        self.pid = 4242

    def wait(self) -> int:  # the daemon's reaper: a sleep that ended well
        return 0


@pytest.fixture
def popen(monkeypatch):
    FakePopen.calls = []
    monkeypatch.setattr(nightly_scheduler.subprocess, "Popen", FakePopen)
    return FakePopen.calls


def stored_job(home, config, **changes):
    """Make sure of the job as a start would (paused: nothing fires), then change the stored job
    directly in the job store, as if time had passed with no scheduler running."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    scheduler = build_scheduler(home)
    scheduler.start(paused=True)
    job = ensure_job(scheduler, config, home)
    # Read before shutting down: APScheduler's loop looks for due jobs once more on its way out.
    state = job.next_run_time, str(job.trigger), job.misfire_grace_time, job.coalesce
    scheduler.shutdown(wait=False)
    if not changes:
        return state
    jobstore = SQLAlchemyJobStore(url=f"sqlite:///{nightly_scheduler.jobstore_path(home)}")
    jobstore.start(build_scheduler(home), "default")  # a scheduler that never starts
    job = jobstore.lookup_job(JOB_ID)
    for key, value in changes.items():
        setattr(job, key, value)
    jobstore.update_job(job)
    jobstore.shutdown()
    return job.next_run_time, str(job.trigger), job.misfire_grace_time, job.coalesce


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_three_missed_nights_run_once_when_the_scheduler_comes_back(dreamer_home, popen):
    config = Config()
    three_nights_ago = datetime.now().astimezone() - timedelta(days=3, hours=1)
    _, trigger, grace, coalesce = stored_job(dreamer_home, config, next_run_time=three_nights_ago)
    assert grace is None and coalesce and "hour='3', minute='0'" in trigger
    scheduler = build_scheduler(dreamer_home)
    stop = nightly_scheduler.start(scheduler, config, dreamer_home)  # "the machine is back on"
    try:
        wait_until(lambda: len(popen) >= 1)
        time.sleep(0.5)
        assert len(popen) == 1  # coalesced: one sleep for three missed nights
        command, kwargs = popen[0]
        assert command == [sys.executable, "-m", "dreamer", "sleep", "--scheduled"]
        assert kwargs["start_new_session"] and kwargs["env"]["DREAMER_HOME"] == str(dreamer_home)
        assert scheduler.get_job(JOB_ID).next_run_time > datetime.now().astimezone()  # next: tonight
    finally:
        stop.set()
        scheduler.shutdown(wait=False)
    assert list((dreamer_home / "logs").glob("sleep-*.log"))


def test_with_apschedulers_default_grace_the_missed_night_would_be_lost(dreamer_home, popen):
    """The control for the test above: a 1 s grace time drops the late run."""
    stored_job(dreamer_home, Config(), next_run_time=datetime.now().astimezone() - timedelta(hours=5),
               misfire_grace_time=1)
    scheduler = build_scheduler(dreamer_home)
    stop = nightly_scheduler.start(scheduler, Config(), dreamer_home)
    time.sleep(1.5)
    stop.set()
    scheduler.shutdown(wait=False)
    assert popen == []


def test_a_restart_keeps_the_missed_run_and_a_new_time_reschedules(dreamer_home):
    past = datetime.now().astimezone() - timedelta(hours=5)
    stored_job(dreamer_home, Config(), next_run_time=past)
    kept, *_ = stored_job(dreamer_home, Config())  # same sleep_time: the job is left as it was
    assert abs((kept - past).total_seconds()) < 1
    moved, trigger, *_ = stored_job(dreamer_home, Config(sleep_time="04:30"))
    assert moved > datetime.now().astimezone() and moved.hour == 4 and moved.minute == 30
    assert "hour='4', minute='30'" in trigger


def test_one_scheduler_per_home(dreamer_home):
    with scheduler_lock(dreamer_home):
        with pytest.raises(SchedulerBusy, match="already runs"):
            nightly_scheduler.run_daemon(dreamer_home, Config())
        with hosted_scheduler(dreamer_home, Config()) as note:
            assert "this chat does not schedule" in note
        assert nightly_scheduler.scheduler_holder(dreamer_home) == os.getpid()
    assert nightly_scheduler.scheduler_holder(dreamer_home) is None


def test_the_chat_can_host_the_scheduler(dreamer_home):
    with hosted_scheduler(dreamer_home, Config(sleep_time="05:15")) as note:
        assert "05:15, scheduled by this chat" in note
        assert nightly_scheduler.scheduler_holder(dreamer_home) == os.getpid()
    when, source = nightly_scheduler.next_run(dreamer_home, Config())
    assert source == "job store" and (when.hour, when.minute) == (5, 15)


# --- the rules of a scheduled night (dreamer.scheduler.nightly) ---------------------------------------------

@pytest.fixture
def fake_sleep(monkeypatch):
    calls = []

    def sleep_now(store, config, cfg, **kwargs):
        calls.append(store.now())
        return SleepOutcome("promoted", "night 1 promoted: 2 turns consolidated", run_id=1)

    monkeypatch.setattr("dreamer.sleep.night.sleep_now", sleep_now)
    return calls


class Cfg:
    preset = "cpu-tiny"


def events(store):
    return [(e["event"], e["detail"]) for e in reversed(ledger.schedule_events(store, 20))]


def test_nothing_waiting_is_skipped(store, dreamer_home, fake_sleep):
    assert run_scheduled(store, Config(), Cfg(), dreamer_home) is None
    assert fake_sleep == [] and events(store) == [("skipped", "nothing to consolidate")]


def test_waits_until_the_chat_has_been_quiet(store, clock, dreamer_home, fake_sleep):
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "my sister is called Ana")
    clock.moment += timedelta(minutes=5)  # the scheduler fires 5 minutes after the last turn
    fired = clock.moment
    pauses = []

    def pause(seconds):
        pauses.append(seconds)
        clock.moment += timedelta(seconds=seconds)

    outcome = run_scheduled(store, Config(sleep_quiet_minutes=30), Cfg(), dreamer_home, pause=pause)
    assert outcome.status == "promoted"
    assert fake_sleep[0] - fired >= timedelta(minutes=25) and sum(pauses) <= 30 * 60
    kinds = [kind for kind, _ in events(store)]
    assert kinds == ["waiting", "started", "finished"]
    assert "used 5 min ago" in events(store)[0][1]


def test_a_chat_that_stays_busy_makes_it_give_up(store, clock, dreamer_home, fake_sleep):
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "tell me a long story")
    store.start_reply(conversation)  # a reply being written all along

    def pause(seconds):
        clock.moment += timedelta(seconds=seconds)

    assert run_scheduled(store, Config(sleep_max_wait_minutes=20), Cfg(), dreamer_home, pause=pause) is None
    assert fake_sleep == [] and events(store)[-1][0] == "gave-up" and store.unconsolidated_count() == 1


def test_a_sleep_already_running_is_skipped(store, clock, dreamer_home, monkeypatch):
    import dreamer.sleep.lock
    from dreamer.sleep.config import load_preset

    monkeypatch.setattr(dreamer.sleep.lock, "LOCK_WAIT_SECONDS", 0.3)  # a real night waits for a recovery pass

    conversation = store.new_conversation()
    store.add_message(conversation, "user", "hello")
    clock.moment += timedelta(hours=2)
    with sleep_lock(dreamer_home):
        assert run_scheduled(store, Config(), load_preset("cpu-tiny"), dreamer_home) is None
    assert events(store)[-1][0] == "skipped" and "already running" in events(store)[-1][1]


def test_the_real_job_launches_a_detached_sleep_process(dreamer_home, monkeypatch):
    ended = {}
    reap = nightly_scheduler.reap

    def reap_and_record(child, home):  # the daemon's reaper waits for the child: read its exit code there
        repairs = reap(child, home)
        ended.update(code=child.returncode, repairs=repairs)
        return repairs

    monkeypatch.setattr(nightly_scheduler, "reap", reap_and_record)
    pid = nightly_scheduler.nightly_job(str(dreamer_home))
    wait_until(lambda: "code" in ended, timeout=120)
    assert ended == {"code": 0, "repairs": []} and pid > 0
    [log] = (dreamer_home / "logs").glob("sleep-*.log")
    assert "scheduled sleep skipped: nothing to consolidate" in log.read_text()
    from storage import Store

    assert events(Store(dreamer_home / "dreamer.db")) == [("skipped", "nothing to consolidate")]


# --- systemd ---------------------------------------------------------------------------------------

def test_systemd_units_are_well_formed(tmp_path):
    import doctest

    from dreamer.scheduler import systemd

    assert doctest.testmod(systemd).failed == 0
    dreamer_home = tmp_path / "my home 50%"  # a space and a specifier character, escaped for systemd
    service, timer = install(dreamer_home, Config(sleep_time="02:45"), tmp_path / "units")
    parsed = {}
    for path in (service, timer):
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # systemd keys are case-sensitive
        parser.read_string(path.read_text())
        parsed[path.suffix] = parser
    assert parsed[".service"]["Service"]["Type"] == "oneshot"
    exec_start = parsed[".service"]["Service"]["ExecStart"].split()
    assert os.path.isabs(exec_start[0]) and exec_start[1:] == ["-m", "dreamer", "sleep", "--scheduled"]
    assert parsed[".service"]["Service"]["Environment"] == f'"DREAMER_HOME={tmp_path}/my home 50%%"'
    assert parsed[".timer"]["Timer"]["OnCalendar"] == "*-*-* 02:45:00"
    assert parsed[".timer"]["Timer"]["Persistent"] == "true"
    assert parsed[".timer"]["Timer"]["Unit"] == service.name
    assert parsed[".timer"]["Install"]["WantedBy"] == "timers.target"
    if shutil.which("systemd-analyze"):  # systemd's own check, where systemd is installed
        # (system mode: --user needs a running user manager, which containers and CI lack)
        result = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_a_job_store_written_by_the_flat_layout_still_runs(dreamer_home, popen):
    """The job store holds the job by reference. Before dreamer/ had packages by phase it was
    `dreamer.scheduler:nightly_job`; a user's stored job (with its missed run) must keep working."""
    import pickle
    import sqlite3

    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.triggers.cron import CronTrigger

    scheduler = build_scheduler(dreamer_home)
    scheduler.start(paused=True)
    scheduler.add_job("dreamer.scheduler:nightly_job", CronTrigger(hour=3, minute=0), args=[str(dreamer_home)],
                      id=JOB_ID, name="dreamer nightly sleep")
    scheduler.shutdown(wait=False)
    jobstore = SQLAlchemyJobStore(url=f"sqlite:///{nightly_scheduler.jobstore_path(dreamer_home)}")
    jobstore.start(build_scheduler(dreamer_home), "default")  # the machine was off at 03:00
    job = jobstore.lookup_job(JOB_ID)
    job.next_run_time = datetime.now().astimezone() - timedelta(hours=2)
    jobstore.update_job(job)
    jobstore.shutdown()
    with sqlite3.connect(nightly_scheduler.jobstore_path(dreamer_home)) as db:
        [(state,)] = db.execute("select job_state from apscheduler_jobs").fetchall()
    assert pickle.loads(state)["func"] == "dreamer.scheduler:nightly_job"  # as the flat layout stored it

    scheduler = build_scheduler(dreamer_home)
    stop = nightly_scheduler.start(scheduler, Config(), dreamer_home)  # today's code, the old store
    try:
        wait_until(lambda: len(popen) >= 1)  # the missed night ran
        assert scheduler.get_job(JOB_ID).func is nightly_scheduler.nightly_job
    finally:
        stop.set()
        scheduler.shutdown(wait=False)
