"""Settings: each declared once (declared.py, by the means in kinds.py), layered in and validated (loading.py),
handed out as one typed, frozen ``Settings``."""

from rxstreamer.config.declared import DECLARATIONS, MAX_BATCH_SIZE, MAX_READ_AHEAD, TABLES, FsyncPolicy, Settings
from rxstreamer.config.kinds import Declaration
from rxstreamer.config.loading import (
    ENV_CONFIG,
    ENV_NESTING,
    ENV_PREFIX,
    ConfigError,
    load_settings,
    require_readable_file,
    settings_summary,
)

__all__ = [
    "DECLARATIONS",
    "ENV_CONFIG",
    "ENV_NESTING",
    "ENV_PREFIX",
    "MAX_BATCH_SIZE",
    "MAX_READ_AHEAD",
    "TABLES",
    "ConfigError",
    "Declaration",
    "FsyncPolicy",
    "Settings",
    "load_settings",
    "require_readable_file",
    "settings_summary",
]
