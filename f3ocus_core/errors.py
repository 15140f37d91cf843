"""The error every settings check raises, in a module of its own so that any module can raise it.

:mod:`f3ocus_core.config` imports the settings dataclasses (for example
:class:`f3ocus_core.data.tasks.DataSettings`), and those check themselves; defining the error here
keeps them from importing the config module back.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A run-config value that cannot work; the message starts with the config key."""


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """``"; did you mean 'population'?"`` for the closest of ``choices`` to a mistyped ``word``, or ``""``
    when none is close: the tail of an error message about an unknown name."""
    close = difflib.get_close_matches(str(word), [str(choice) for choice in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
