"""The memetic step every metaheuristic shares: polish candidates, and search the archive's neighbours.

Two exact operators from :mod:`f3ocus_core.selection.transport` make the metaheuristics search over
coverage profiles (which decide the variance) while the importance of each profile is always the
best possible:

* **Polish** (Lamarckian): every assignment a selector evaluates is first replaced by the most
  important assignment with the same coverage counts (cycle cancelling in its transfer graph), so an
  assignment never loses to another with the same profile, and the selector's own operators (crossover,
  leaders, ants, neighbours, chains) decide which profiles are tried.
* **Pareto local search** on the archive (Paquete, Chiarandini and Stuetzle, 2004): each iteration a
  few archive members not yet explored, chosen by a crowding tournament, have every neighbour profile
  (one unit of coverage moved from one layer to another, or with ``exact_budget=False`` dropped or
  added) evaluated exactly by one all-pairs longest-path computation; the neighbours that no archive
  member dominates enter the archive, already polished.

Both keep every budget and change nothing else about a selector.
"""

from __future__ import annotations

import numpy as np

from f3ocus_core.selection.archive import Archive, crowding_distance
from f3ocus_core.selection.front import nondominated
from f3ocus_core.selection.moves import mutate
from f3ocus_core.selection.problem import Problem
from f3ocus_core.selection.transport import apply_move, moved_objectives, polish, transfer_moves


class ParetoLocalSearch:
    """Explores the exact coverage-move neighbourhood of archive members, each member once."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self._explored: set[tuple[float, float]] = set()

    def step(self, archive: Archive, rng: np.random.Generator, count: int) -> int:
        """Explore up to ``count`` unexplored archive members; returns the assignments evaluated."""
        if count <= 0 or not len(archive):
            return 0
        objectives = archive.objectives()
        fresh = np.array([(float(i), float(v)) not in self._explored for i, v in objectives])
        candidates = np.flatnonzero(fresh)
        if candidates.size == 0:
            return 0
        if candidates.size > count:
            distance = crowding_distance(objectives[:, 0], objectives[:, 1])[candidates]
            picks = rng.integers(candidates.size, size=(count, 2))
            winners = np.where(distance[picks[:, 0]] >= distance[picks[:, 1]], picks[:, 0], picks[:, 1])
            candidates = candidates[np.unique(winners)]
        for i, v in objectives[candidates]:
            self._explored.add((float(i), float(v)))
        problem = self.problem
        members = polish(problem, archive.masks(candidates))
        importance, variance = problem.evaluate(members)
        archive.update(members, importance, variance)
        for i, v in zip(importance, variance):
            self._explored.add((float(i), float(v)))
        gain, hop, who = transfer_moves(problem, members)
        moved_imp, moved_var = moved_objectives(problem, members, importance, gain)
        member, start, end = np.nonzero(np.isfinite(gain))
        imp, var = moved_imp[member, start, end], moved_var[member, start, end]
        open_ = ~archive.covered(imp, var)
        member, start, end, imp, var = member[open_], start[open_], end[open_], imp[open_], var[open_]
        if member.size == 0:
            return len(members)
        best = nondominated(imp, var)
        moved = np.stack([apply_move(members[member[k]], int(start[k]), int(end[k]), hop[member[k]], who[member[k]])
                          for k in best])
        archive.update(moved, *problem.evaluate(moved))
        return len(members) + len(moved)


def polish_if(problem: Problem, masks: np.ndarray, enabled: bool) -> np.ndarray:
    """``masks`` polished (see :func:`f3ocus_core.selection.transport.polish`) when ``enabled``."""
    return polish(problem, masks) if enabled and len(masks) else masks


def vary(problem: Problem, masks: np.ndarray, rng: np.random.Generator, rate: float, polished: bool,
         guided: float = 0.5) -> np.ndarray:
    """Mutation of a selector: exact coverage moves with ``polished``, else budget-keeping swaps."""
    if not len(masks):
        return masks
    if polished:
        return coverage_mutation(problem, masks, rng, rate, guided)
    return mutate(problem, masks, rng, rate, guided)


def coverage_mutation(problem: Problem, masks: np.ndarray, rng: np.random.Generator, rate: float,
                      guided: float = 0.5) -> np.ndarray:
    """Assignments polished, then each moved by ``1 + Poisson(rate - 1)`` exact unit moves of coverage.

    A move shifts one unit of coverage from one layer to another (with ``exact_budget=False`` also
    drops or adds one) along the longest path of the transfer graph, so the result is again the best
    assignment of its new profile. With probability ``guided`` the move is drawn from the Pareto-best
    moves of the neighbourhood, otherwise from all possible moves, uniformly. The input is polished
    first.
    """
    masks = polish(problem, masks)
    moves = 1 + rng.poisson(max(rate - 1.0, 0.0), size=len(masks))
    for step in range(int(moves.max(initial=0))):
        active = np.flatnonzero(moves > step)
        gain, hop, who = transfer_moves(problem, masks[active])
        moved_imp, moved_var = moved_objectives(problem, masks[active], problem.evaluate(masks[active])[0], gain)
        for k, member in enumerate(active):
            start, end = np.nonzero(np.isfinite(gain[k]))
            if start.size == 0:
                continue
            if rng.random() < guided:
                options = nondominated(moved_imp[k, start, end], moved_var[k, start, end])
                choice = options[rng.integers(options.size)]
            else:
                choice = rng.integers(start.size)
            masks[member] = apply_move(masks[member], int(start[choice]), int(end[choice]), hop[k], who[k])
    return masks
