"""The memetic step every metaheuristic shares: polish, search the archive's neighbours, walk the hull.

Three exact operators from :mod:`f3ocus_core.selection.transport` make the metaheuristics search over
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
* **Hull walk** (:class:`HullWalk`, run to its end by the first local-search step): from the
  clients' own top-b down the front's convex hull by exact unit moves, which gives the archive every
  supported point of the front (exactly, with exact budgets) and so both of its ends.

All keep every budget and change nothing else about a selector.
"""

from __future__ import annotations

import numpy as np

from f3ocus_core.selection.archive import Archive, crowding_distance
from f3ocus_core.selection.front import nondominated
from f3ocus_core.selection.moves import mutate
from f3ocus_core.selection.problem import Problem
from f3ocus_core.selection.transport import apply_move, moved_objectives, polish, transfer_moves


class ParetoLocalSearch:
    """Explores the exact coverage-move neighbourhood of archive members, each member once.

    With ``hull_walk`` the first step first walks a :class:`HullWalk` to its end, so the archive holds
    every supported point of the front from then on.
    """

    def __init__(self, problem: Problem, hull_walk: bool = False) -> None:
        self.problem = problem
        self._explored: set[tuple[float, float]] = set()
        self.hull_walk = hull_walk
        self._walk = HullWalk(problem)

    def step(self, archive: Archive, rng: np.random.Generator, count: int) -> int:
        """Explore up to ``count`` unexplored archive members; returns the assignments evaluated."""
        walked = self._walk.step(archive) if self.hull_walk else 0
        if count <= 0 or not len(archive):
            return walked
        objectives = archive.objectives()
        fresh = np.array([(float(i), float(v)) not in self._explored for i, v in objectives])
        candidates = np.flatnonzero(fresh)
        if candidates.size == 0:
            return walked
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
        gain, hop = transfer_moves(problem, members)
        moved_imp, moved_var = moved_objectives(problem, members, importance, gain)
        member, start, end = np.nonzero(np.isfinite(gain))
        imp, var = moved_imp[member, start, end], moved_var[member, start, end]
        open_ = ~archive.covered(imp, var)
        member, start, end, imp, var = member[open_], start[open_], end[open_], imp[open_], var[open_]
        if member.size == 0:
            return walked + len(members)
        best = nondominated(imp, var)
        moved = np.stack(
            [apply_move(problem, members[member[k]], int(start[k]), int(end[k]), hop[member[k]]) for k in best]
        )
        archive.update(moved, *problem.evaluate(moved))
        return walked + len(members) + len(moved)


class HullWalk:
    """The supported points of the front, walked from the clients' own top-b down the convex hull.

    The walk starts at the front's importance end, every client's own top-b (:meth:`Problem.top_b`),
    and each step takes the exact unit move of coverage
    (:func:`f3ocus_core.selection.transport.transfer_moves`) that gives up the least
    importance per unit of variance removed (one that removes variance without losing importance
    first), until no move removes variance; every point is offered to the archive.

    Why this is the hull: the best importance of a coverage profile is the value of a transportation
    problem, an M-concave function of the profile (Murota, *Discrete Convex Analysis*, 2003), and the
    sum of squared counts is separable convex, so for every weight lambda a profile that no unit move
    improves in importance - lambda * variance is a global optimum. The top-b is the optimum for
    lambda = 0, and from an optimum the move with the best rate leads to the optimum of the next
    breakpoint (or along a hull edge), so the walk visits the vertices of the front's convex hull in
    order, down to its most balanced end: the points every Lagrangian (weighted-sum) method can find,
    all of them, in about as many steps as units of coverage must move. The points between hull
    vertices (the non-supported part of the front) are left to the metaheuristics. With
    ``exact_budget=False`` the total coverage changes, the variance is no longer separable in the
    counts, and the walk is a heuristic.

    A call can be limited to a number of moves; the next call resumes where it stopped.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self._member: np.ndarray | None = None
        self.done = False

    def step(self, archive: Archive, steps: int | None = None) -> int:
        """Walk up to ``steps`` moves further (``None``: to the end); returns the assignments evaluated."""
        steps = np.inf if steps is None else steps
        if steps <= 0 or self.done:
            return 0
        evaluations = 0
        if self._member is None:
            self._member = self.problem.top_b()[None]
            archive.update(self._member, *self.problem.evaluate(self._member))
            evaluations += 1
        while evaluations < steps:
            moved = self._next(self._member)
            if moved is None:
                self.done = True
                break
            self._member = moved
            evaluations += 1
            archive.update(moved, *self.problem.evaluate(moved))
        return evaluations

    def _next(self, member: np.ndarray) -> np.ndarray | None:
        """The assignment one move further down the hull, or ``None`` at the front's balanced end."""
        problem = self.problem
        importance, variance = problem.evaluate(member)
        gain, hop = transfer_moves(problem, member)
        moved_imp, moved_var = moved_objectives(problem, member, importance, gain)
        d_imp, d_var = moved_imp[0] - importance[0], moved_var[0] - variance[0]
        useful = np.isfinite(gain[0]) & (d_var < 0)
        if not useful.any():
            return None
        free = useful & (d_imp >= 0)
        rate = np.where(free, np.inf, d_imp / np.where(useful, -d_var, 1.0))
        tie = np.where(free, d_imp, 0.0)
        order = np.lexsort((-tie.ravel(), -np.where(useful, rate, -np.inf).ravel()))
        start, target = np.unravel_index(order[0], gain.shape[1:])
        return apply_move(problem, member[0], int(start), int(target), hop[0])[None]


def polish_if(problem: Problem, masks: np.ndarray, enabled: bool) -> np.ndarray:
    """``masks`` polished (see :func:`f3ocus_core.selection.transport.polish`) when ``enabled``."""
    return polish(problem, masks) if enabled and len(masks) else masks


def vary(
    problem: Problem, masks: np.ndarray, rng: np.random.Generator, rate: float, polished: bool, guided: float = 0.5
) -> np.ndarray:
    """Mutation of a selector: exact coverage moves with ``polished``, else budget-keeping swaps."""
    if not len(masks):
        return masks
    if polished:
        return coverage_mutation(problem, masks, rng, rate, guided)
    return mutate(problem, masks, rng, rate, guided)


def coverage_mutation(
    problem: Problem, masks: np.ndarray, rng: np.random.Generator, rate: float, guided: float = 0.5
) -> np.ndarray:
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
        gain, hop = transfer_moves(problem, masks[active])
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
            masks[member] = apply_move(problem, masks[member], int(start[choice]), int(end[choice]), hop[k])
    return masks
