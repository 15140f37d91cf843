"""Progress bars with an estimate of the time left, for long local work (building a base checkpoint,
building MedVQA-FL, a comparison grid's cells), drawn by tqdm on standard error only when it is a
terminal: a log file or CI gets nothing from them (the steps keep their own log lines)."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str = "it", iterable: Iterable | None = None) -> tqdm:
    """A bar over ``total`` units of work (or over ``iterable``, ``total`` of them) on ``sys.stderr``,
    with rate and time left; silent, and costing nothing, when standard error is not a terminal
    (tqdm's ``disable=None``)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)
