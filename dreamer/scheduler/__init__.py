"""When the agent sleeps: the APScheduler daemon (dreamer.scheduler.daemon), a scheduled
night's rules (dreamer.scheduler.nightly) and the systemd timer (dreamer.scheduler.systemd).

`nightly_job` is named here because APScheduler's job stores written before this package
existed hold the job as the reference `dreamer.scheduler:nightly_job`; it must keep resolving.
"""

from dreamer.scheduler.daemon import nightly_job

__all__ = ["nightly_job"]
