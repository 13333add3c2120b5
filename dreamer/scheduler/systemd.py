"""`dreamer schedule --install-systemd`: a user service + timer, the alternative to `dreamer daemon`.

    ~/.config/systemd/user/dreamer-sleep.service   Type=oneshot: `python -m dreamer sleep --scheduled`
    ~/.config/systemd/user/dreamer-sleep.timer     OnCalendar=*-*-* HH:MM:00, Persistent=true

`Persistent=true` is systemd's catch-up: a run missed while the machine was off starts at the
next boot (or resume). The service runs the same `--scheduled` command as the daemon's job, so
the skip/wait rules and the one-sleep-at-a-time lock are the same. Then:

    systemctl --user daemon-reload && systemctl --user enable --now dreamer-sleep.timer
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from storage import Config

UNIT = "dreamer-sleep"


def unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def unit_word(text: str, *, command: bool = False) -> str:
    """One word of a unit file: `%` specifiers (and `$` variables in a command) escaped, quoted if needed.

    >>> unit_word("/home/me/my data/50%")
    '"/home/me/my data/50%%"'
    >>> unit_word("/opt/$HOME/python", command=True)
    '/opt/$$HOME/python'
    """
    text = text.replace("%", "%%")
    if command:
        text = text.replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def service_text(home: Path) -> str:
    command = " ".join(unit_word(part, command=True) for part in (sys.executable, "-m", "dreamer", "sleep", "--scheduled"))
    return (
        "[Unit]\n"
        "Description=dreamer: consolidate the day's conversations (sleep)\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"Environment={unit_word(f'DREAMER_HOME={home}')}\n"
        f"ExecStart={command}\n"
        # A night of training should not make the desktop sluggish.
        "Nice=10\n"
        "IOSchedulingClass=idle\n"
    )


def timer_text(config: Config) -> str:
    return (
        "[Unit]\n"
        "Description=dreamer: nightly sleep\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar=*-*-* {config.sleep_time}:00\n"
        "Persistent=true\n"
        f"Unit={UNIT}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )


def install(home: Path, config: Config, directory: Path | None = None) -> list[Path]:
    directory = directory or unit_dir()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((f"{UNIT}.service", service_text(home)), (f"{UNIT}.timer", timer_text(config))):
        path = directory / name
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
        written.append(path)
    return written
