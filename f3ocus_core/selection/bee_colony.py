"""Artificial bee colony (ABC) for the layer-assignment problem, in a multi-objective form.

Karaboga (2005), with an external archive of non-dominated food sources that the onlookers exploit,
as in multi-objective ABC (Akbari, Hedayatzadeh, Ziarati and Hassanizadeh, 2012).
``sources`` food sources are assignments, each with a trial counter.

* Employed phase: every source makes one neighbour. The discrete form of
  ``v = x + phi (x - x_k)`` picks a random partner source ``k`` and a random client: with ``phi > 0``
  (probability 1/2) the client moves away from the partner (swap a layer both train for one neither
  trains), otherwise toward it (swap a layer only it trains for one only the partner trains). If the
  rows leave no such move, and for a share ``mutation`` of the bees, a random budget-keeping move of
  :func:`f3ocus_core.selection.moves.mutate` is made instead (which includes exchanges between two
  clients and, with ``exact_budget=False``, drops and adds). Greedy selection: the neighbour
  replaces the source if it dominates it, or with probability 1/2 if neither dominates; otherwise
  the trial counter grows.
* Onlooker phase: ``onlookers`` bees choose among the best food found so far, the archive, by a
  crowding tournament (the "nectar" of a non-dominated source is how isolated it is on the front),
  and each makes a neighbour of its choice with the same rule, partnered with a random source; the
  archive keeps what improves it.
* Scout phase: a source whose trial counter exceeds ``limit`` is abandoned and replaced by an archive
  member (crowding tournament) after a few random moves.

All non-dominated assignments seen are kept in the archive, which is the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.memetic import ParetoLocalSearch, polish_if, vary
from f3ocus_core.selection.moves import first_population, mutate
from f3ocus_core.selection.params import MetaheuristicParams, at_least, positive, unit
from f3ocus_core.selection.problem import Problem


@dataclass(frozen=True)
class ABCParams(MetaheuristicParams):
    """Hyperparameters of :func:`run`.

    sources : int
        Food sources (= employed bees).
    onlookers : int
        Onlooker bees per cycle.
    cycles : int
        Employed, onlooker and scout phases run this many times.
    limit : int
        Failed improvements after which a source is abandoned to a scout.
    scout_moves : float
        Mean number of random moves applied to the archive member a scout starts from.
    mutation : float
        Share of neighbours made by a random budget-keeping move of ``moves.mutate`` (swap, exchange
        between two clients, or drop/add) instead of the partner rule.
    The shared settings (``lagrangian_start``, ``polish``, ``local_search``, ``hull_walk``) are
    those of :class:`~f3ocus_core.selection.params.MetaheuristicParams`.
    """

    sources: int = 12
    onlookers: int = 12
    cycles: int = 25
    limit: int = 5
    scout_moves: float = 3.0
    mutation: float = 0.5
    algorithm: ClassVar[str] = "abc"

    def check(self) -> None:
        super().check()
        at_least("sources", self.sources, 2, "abc")
        positive("onlookers", self.onlookers, "abc", allow_zero=True)
        positive("cycles", self.cycles, "abc", allow_zero=True)
        positive("limit", self.limit, "abc")
        positive("scout_moves", self.scout_moves, "abc")
        unit("mutation", self.mutation, "abc")


def run(problem: Problem, rng: np.random.Generator, params: ABCParams) -> tuple[Archive, dict]:
    """Run the colony and return the archive of non-dominated assignments."""
    size = params.sources
    food, importance, variance, archive, evaluations = first_population(
        problem, rng, size, params.lagrangian_start, params.polish
    )
    local = ParetoLocalSearch(problem, params.hull_walk)
    trials = np.zeros(size, dtype=int)
    for _ in range(params.cycles):
        candidate = polish_if(problem, _neighbours(problem, food, food, rng, params.mutation), params.polish)
        cand_imp, cand_var = problem.evaluate(candidate)
        archive.update(candidate, cand_imp, cand_var)
        dominates = (
            (cand_imp >= importance) & (cand_var <= variance) & ((cand_imp > importance) | (cand_var < variance))
        )
        dominated = (cand_imp <= importance) & (cand_var >= variance)
        better = dominates | (~dominated & (rng.random(size) < 0.5))
        food[better], importance[better], variance[better] = candidate[better], cand_imp[better], cand_var[better]
        trials = np.where(better, 0, trials + 1)
        if params.onlookers:
            chosen = archive.masks(archive.sample(rng, params.onlookers))
            candidate = polish_if(problem, _neighbours(problem, chosen, food, rng, params.mutation), params.polish)
            archive.update(candidate, *problem.evaluate(candidate))
        evaluations += size + params.onlookers
        tired = np.flatnonzero(trials > params.limit)
        if tired.size:
            starts = archive.masks(archive.sample(rng, tired.size))
            food[tired] = vary(problem, starts, rng, params.scout_moves, params.polish)
            importance[tired], variance[tired] = problem.evaluate(food[tired])
            trials[tired] = 0
            evaluations += tired.size
            archive.update(food[tired], importance[tired], variance[tired])
        evaluations += local.step(archive, rng, params.local_search)
    return archive, {"evaluations": evaluations}


def _neighbours(
    problem: Problem, bases: np.ndarray, food: np.ndarray, rng: np.random.Generator, mutation: float
) -> np.ndarray:
    """One neighbour per base: one client moves toward or away from a random food source, or (with
    probability ``mutation``, and when the rows leave no such move) a random budget-keeping move."""
    count, n_clients, n_layers = len(bases), problem.n_clients, problem.n_layers
    partners = rng.integers(len(food), size=count)
    clients = rng.integers(n_clients, size=count)
    own = bases[np.arange(count), clients]
    other = food[partners, clients]
    toward = rng.random(count) < 0.5
    noise = rng.random((count, n_layers))
    drop_pool = np.where(toward[:, None], own & ~other, own & other)
    add_pool = np.where(toward[:, None], other & ~own, ~own & ~other)
    usable = drop_pool.any(axis=1) & add_pool.any(axis=1) & (rng.random(count) >= mutation)
    drop = np.where(drop_pool, noise, -1.0).argmax(axis=1)
    add = np.where(add_pool, noise, -1.0).argmax(axis=1)
    result = bases.copy()
    rows = np.flatnonzero(usable)
    result[rows, clients[rows], drop[rows]] = False
    result[rows, clients[rows], add[rows]] = True
    stuck = np.flatnonzero(~usable)
    if stuck.size:
        result[stuck] = mutate(problem, result[stuck], rng, rate=1.0)
    return result
