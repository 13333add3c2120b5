"""Persistent state of dreamer: the user directory, the config file and the SQLite database.

`storage` imports neither `agent` nor `dreamer`; both of them go through `Store`.
"""

from storage.config import Config, ConfigError, load_config
from storage.days import day_of
from storage.paths import dreamer_home
from storage.store import Store, StoreError

__all__ = ["Config", "ConfigError", "Store", "StoreError", "day_of", "dreamer_home", "load_config"]
