"""The project's error base: a bad input or fault its CLIs report as one line (no traceback)."""
from __future__ import annotations


class RepnextError(ValueError):
    """A bad input or a fault the user can act on; ``str(e)`` is the whole message, naming the value."""


class ConfigError(RepnextError):
    """A run setting (a config field, a recipe, a profile) that no run can use."""


class StoreError(RepnextError, OSError):
    """A results-store file that cannot be read or written (invalid JSON, full disk, a folder in the way); an
    OSError too, so that callers catching a failed write still do."""
