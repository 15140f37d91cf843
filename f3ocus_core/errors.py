"""The error every settings check raises, in a module of its own so that any module can raise it.

:mod:`f3ocus_core.config` imports the settings dataclasses (for example
:class:`f3ocus_core.data.tasks.DataSettings`), and those check themselves; defining the error here
keeps them from importing the config module back.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A run-config value that cannot work; the message starts with the config key."""
