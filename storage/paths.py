"""Where dreamer keeps its files: one private directory, `DREAMER_HOME`.

Default: `$XDG_DATA_HOME/dreamer` (usually `~/.local/share/dreamer`). Everything dreamer
writes (database, config, model cache, adapters, logs) lives below it, created 0700, with
files 0600, because the conversations are personal.
"""

from __future__ import annotations

import os
from pathlib import Path


def dreamer_home() -> Path:
    """The user directory, from `DREAMER_HOME` or the XDG data directory."""
    override = os.environ.get("DREAMER_HOME")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "dreamer"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the user alone."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def make_private(path: Path) -> None:
    """Restrict an existing file to the user (0600)."""
    if path.exists():
        os.chmod(path, 0o600)


def database_path(home: Path | None = None) -> Path:
    return (home or dreamer_home()) / "dreamer.db"


def config_path(home: Path | None = None) -> Path:
    return (home or dreamer_home()) / "config.toml"


def cache_dir(home: Path | None = None) -> Path:
    """Model caches (e.g. the dequantized safetensors of the embedded GGUF)."""
    return (home or dreamer_home()) / "cache"


def adapters_dir(home: Path | None = None) -> Path:
    """The adapter stack: one folder per night's LoRA expert, plus the manifest."""
    return (home or dreamer_home()) / "adapters"
