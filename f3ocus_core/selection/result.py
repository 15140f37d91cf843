"""What a selector returns: the chosen assignment and the whole non-dominated set it found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SelectionResult:
    """The outcome of :func:`f3ocus_core.selection.select`.

    Parameters
    ----------
    masks : np.ndarray
        ``(N, L)`` bool, the chosen assignment (``masks[i, l]``: client ``i`` trains layer ``l``).
    front : np.ndarray
        ``(F, 2)`` float, (total importance, coverage variance) of every non-dominated assignment
        found, sorted by increasing importance.
    front_masks : np.ndarray
        ``(F, N, L)`` bool, the assignments behind ``front``.
    chosen : int
        Index into ``front`` of the chosen assignment (``front_masks[chosen]`` equals ``masks``).
    algorithm : str
        Name of the selector that produced it.
    seconds : float
        Wall time of the selection, validation included.
    pick : str
        The rule that chose the point.
    info : dict
        Selector-specific facts (evaluations, whether the exact sweep completed, parameters used).
    """

    masks: np.ndarray
    front: np.ndarray
    front_masks: np.ndarray
    chosen: int
    algorithm: str
    seconds: float
    pick: str = "knee"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def importance(self) -> float:
        """Total importance of the chosen assignment."""
        return float(self.front[self.chosen, 0])

    @property
    def variance(self) -> float:
        """Coverage variance of the chosen assignment."""
        return float(self.front[self.chosen, 1])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary: the chosen layers per client, the front and the choice.

        ``layers`` lists the chosen layer indices per client; ``front_layers`` does the same for every
        front point, so the file alone can redraw the front and replay any other choice.
        """
        return {
            "algorithm": self.algorithm,
            "pick": self.pick,
            "seconds": float(self.seconds),
            "chosen": int(self.chosen),
            "importance": self.importance,
            "variance": self.variance,
            "layers": [np.flatnonzero(row).tolist() for row in self.masks],
            "front": [[float(i), float(v)] for i, v in self.front],
            "front_layers": [[np.flatnonzero(row).tolist() for row in masks] for masks in self.front_masks],
            "info": _jsonable(self.info),
        }


def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays to plain Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
