"""The Pareto archive every selector fills: all non-dominated assignments seen, and crowding.

The archive, not a selector's final population, is what :func:`f3ocus_core.selection.select`
returns. Its container is DEAP's :class:`deap.tools.ParetoFront` of DEAP individuals
(:mod:`f3ocus_core.selection.individuals`); dominance is decided with numpy first.
"""

from __future__ import annotations

import numpy as np
from deap import tools

from f3ocus_core.selection.front import nondominated
from f3ocus_core.selection.individuals import as_masks, make_individuals


class Archive:
    """Every non-dominated assignment seen so far, held in a :class:`deap.tools.ParetoFront`.

    Offspring dominated by (or equal in objectives to) an archive member are rejected with numpy
    before any DEAP individual is built; one assignment is kept per objective pair.
    """

    def __init__(self) -> None:
        self.front = tools.ParetoFront(similar=np.array_equal)
        self._imp = np.zeros(0)
        self._var = np.zeros(0)

    def covered(self, importance: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """Whether each objective pair is dominated by, or equal to, an archive member.

        A pair is covered when some member has variance at most its variance and importance at least
        its importance: the best importance among the members sorted by variance, looked up by binary
        search, so a check costs O((F + C) log F) for F members and C pairs.
        """
        importance, variance = np.asarray(importance), np.asarray(variance)
        if not len(self._imp):
            return np.zeros(importance.shape, dtype=bool)
        order = np.argsort(self._var, kind="stable")
        best = np.maximum.accumulate(self._imp[order])
        below = np.searchsorted(self._var[order], variance, side="right") - 1
        return (below >= 0) & (best[np.maximum(below, 0)] >= importance)

    def update(self, masks: np.ndarray, importance: np.ndarray, variance: np.ndarray) -> int:
        """Offer a population; returns how many assignments entered the archive.

        Dominance is decided with numpy; the ``ParetoFront`` container only sees the removals and the
        insertions (``HallOfFame.remove`` / ``insert``), so an update costs O(changes) Python steps
        rather than O(archive size) per candidate as ``ParetoFront.update`` would.
        """
        candidates = np.flatnonzero(~self.covered(importance, variance))
        if candidates.size == 0:
            return 0
        best = candidates[nondominated(importance[candidates], variance[candidates])]
        beaten = (
            (importance[best][None, :] >= self._imp[:, None]) & (variance[best][None, :] <= self._var[:, None])
        ).any(1)
        for index in np.flatnonzero(beaten)[::-1]:
            self.front.remove(int(index))
        for ind in make_individuals(masks[best], importance[best], variance[best]):
            self.front.insert(ind)
        weighted = np.array([ind.fitness.wvalues for ind in self.front], dtype=float).reshape(-1, 2)
        self._imp, self._var = weighted[:, 0], -weighted[:, 1]
        return len(best)

    def __len__(self) -> int:
        return len(self.front)

    def objectives(self) -> np.ndarray:
        """``(F, 2)`` (importance, variance) of the archive members."""
        return np.column_stack([self._imp, self._var])

    def masks(self, indices: np.ndarray | None = None) -> np.ndarray:
        """``(F, N, L)`` assignments of the archive members (or of the members at ``indices``)."""
        members = list(self.front) if indices is None else [self.front[int(k)] for k in indices]
        return as_masks(members)

    def sample(self, rng: np.random.Generator, size: int, crowded: bool = True) -> np.ndarray:
        """Indices of ``size`` members; with ``crowded`` a binary tournament on crowding distance.

        Less crowded members (and the two extremes) win, which spreads leaders and parents along the
        front (as in MOPSO-CD, Raquel and Naval, 2005).
        """
        count = len(self._imp)
        picks = rng.integers(count, size=(size, 2))
        if not crowded or count < 3:
            return picks[:, 0]
        distance = crowding_distance(self._imp, self._var)
        return np.where(distance[picks[:, 0]] >= distance[picks[:, 1]], picks[:, 0], picks[:, 1])


def crowding_distance(importance: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of 2-D points (extremes get ``inf``)."""
    count = len(importance)
    distance = np.zeros(count)
    if count < 3:
        return np.full(count, np.inf)
    for values in (importance, variance):
        order = np.argsort(values, kind="stable")
        span = values[order[-1]] - values[order[0]]
        distance[order[[0, -1]]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (values[order[2:]] - values[order[:-2]]) / span
    return distance
