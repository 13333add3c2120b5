"""A scheduled night: the rules around the sleep, whoever fires it (dreamer's scheduler or systemd).

    dreamer sleep --scheduled         # what the nightly job runs, in a process of its own

1. Nothing waits for consolidation: skip (recorded; exit 0).
2. The chat was used in the last `sleep_quiet_minutes`, or a reply is being written: wait,
   re-checking, for at most `sleep_max_wait_minutes`; still busy then: give up until the next
   night (the turns keep waiting, nothing is lost).
3. Sleep (dreamer.sleep.sleep_now). Another sleep holding the lock: skip. Every outcome lands
   in `schedule_events`, which `dreamer schedule` shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from storage import Config, Store, ledger
from storage.words import count

# While waiting for quiet, look again at least this often and at most this rarely (seconds).
MIN_CHECK, MAX_CHECK = 30.0, 300.0


def minutes_idle(store: Store) -> tuple[float, bool]:
    """(minutes since the newest turn, a reply is being written now); inf when there is no turn."""
    store.recover_dead_replies()  # a chat that crashed mid-reply is not "writing a reply" all night
    last, live = store.last_activity()
    idle = (store.now() - last).total_seconds() / 60 if last else math.inf
    return idle, live


def wait_for_quiet(store: Store, quiet_minutes: int, max_wait_minutes: int, *,
                   pause: Callable[[float], None] = time.sleep) -> bool:
    """True once the chat has been quiet for `quiet_minutes`; False after `max_wait_minutes`."""
    waited = 0.0
    told = False
    while True:
        idle, live = minutes_idle(store)
        if not live and idle >= quiet_minutes:
            return True
        budget = max_wait_minutes * 60 - waited
        if budget <= 0:
            return False
        if not told:
            why = "a reply is being written" if live else f"the chat was used {idle:.0f} min ago"
            ledger.log_schedule_event(store, "waiting", f"{why}; waiting for {quiet_minutes} quiet minutes "
                                                        f"(at most {max_wait_minutes} min)")
            told = True
        remaining = MIN_CHECK if live else (quiet_minutes - idle) * 60
        step = min(max(remaining, MIN_CHECK), MAX_CHECK, budget)
        pause(step)
        waited += step


def run_scheduled(store: Store, config: Config, cfg, home: Path, *, progress=None,
                  pause: Callable[[float], None] = time.sleep):
    """Apply the rules, then sleep. Returns the SleepOutcome, or None when skipped or given up."""
    from dreamer.sleep.outcome import SleepBusy
    from dreamer.sleep.night import sleep_now

    waiting = store.unconsolidated_count()
    if waiting == 0:
        ledger.log_schedule_event(store, "skipped", "nothing to consolidate")
        return None
    if not wait_for_quiet(store, config.sleep_quiet_minutes, config.sleep_max_wait_minutes, pause=pause):
        ledger.log_schedule_event(store, "gave-up", f"the chat stayed active for {config.sleep_max_wait_minutes} min; "
                                                    f"{count(waiting, 'message')} wait for the next night")
        return None
    ledger.log_schedule_event(store, "started", f"{count(waiting, 'message')}, preset {cfg.preset}")
    try:
        outcome = sleep_now(store, config, cfg, progress=progress, home=home)
    except SleepBusy as err:
        ledger.log_schedule_event(store, "skipped", str(err))
        return None
    except BaseException as err:
        ledger.log_schedule_event(store, "failed", f"{type(err).__name__}: {err}"[:500])
        raise
    ledger.log_schedule_event(store, "finished", f"{outcome.status}: {outcome.message}"[:500], outcome.run_id)
    return outcome
