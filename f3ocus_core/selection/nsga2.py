"""NSGA-II (Deb, Pratap, Agarwal and Meyarivan, 2002) on DEAP for the layer-assignment problem.

Each generation: binary tournaments on (non-domination rank, crowding distance) pick parents; uniform
crossover of whole client rows and budget-keeping single-client moves make offspring; the next
population is the best ``population`` of parents plus offspring by ``deap.tools.selNSGA2``
(non-dominated sorting, then crowding distance). Every evaluated assignment is offered to a Pareto
archive, which is what the selector returns. Offspring always keep every budget, so no penalty or
repair is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from deap import tools

from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.individuals import make_individuals
from f3ocus_core.selection.memetic import ParetoLocalSearch, vary
from f3ocus_core.selection.moves import first_population
from f3ocus_core.selection.params import MetaheuristicParams, at_least, positive, unit
from f3ocus_core.selection.problem import Problem


@dataclass(frozen=True)
class NSGA2Params(MetaheuristicParams):
    """Hyperparameters of :func:`run`.

    population : int
        Individuals per generation, at least 4 (an odd number is rounded up).
    generations : int
        Number of generations.
    crossover : float
        Probability that a parent pair is recombined (row-wise uniform crossover).
    mutation : float
        Mean number of single-client moves per offspring (at least one).
    guided : float
        Share of moves that balance coverage rather than being uniform (see ``mutate``).
    The shared settings (``lagrangian_start``, ``polish``, ``local_search``, ``hull_walk``) are
    those of :class:`~f3ocus_core.selection.params.MetaheuristicParams`.
    """

    population: int = 12
    generations: int = 20
    crossover: float = 0.9
    mutation: float = 1.5
    guided: float = 0.5
    algorithm: ClassVar[str] = "nsga2"

    def check(self) -> None:
        super().check()
        at_least("population", self.population, 4, "nsga2")
        positive("generations", self.generations, "nsga2", allow_zero=True)
        unit("crossover", self.crossover, "nsga2")
        positive("mutation", self.mutation, "nsga2")
        unit("guided", self.guided, "nsga2")


def run(problem: Problem, rng: np.random.Generator, params: NSGA2Params) -> tuple[Archive, dict]:
    """Evolve a population and return the archive of every non-dominated assignment seen."""
    size = params.population + params.population % 2
    masks, importance, variance, archive, evaluations = first_population(
        problem, rng, size, params.lagrangian_start, params.polish
    )
    local = ParetoLocalSearch(problem, params.hull_walk)
    population = tools.selNSGA2(make_individuals(masks, importance, variance), size, nd="log")
    for _ in range(params.generations):
        parents = _tournament(population, rng, size)
        first, second = parents[0::2], parents[1::2]
        child_a, child_b = row_crossover(first, second, rng)
        keep = rng.random(len(first)) >= params.crossover
        child_a[keep], child_b[keep] = first[keep], second[keep]
        children = vary(problem, np.concatenate([child_a, child_b]), rng, params.mutation, params.polish, params.guided)
        importance, variance = problem.evaluate(children)
        evaluations += len(children)
        archive.update(children, importance, variance)
        evaluations += local.step(archive, rng, params.local_search)
        population = tools.selNSGA2(population + make_individuals(children, importance, variance), size, nd="log")
    return archive, {"evaluations": evaluations}


def _tournament(population: list, rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` parents by binary tournament: lower rank wins, then larger crowding distance."""
    rank = np.empty(len(population), dtype=int)
    position = {id(ind): k for k, ind in enumerate(population)}
    for level, front in enumerate(tools.sortLogNondominated(population, len(population))):
        for ind in front:
            rank[position[id(ind)]] = level
    crowd = np.array([getattr(ind.fitness, "crowding_dist", 0.0) for ind in population])
    a, b = rng.integers(len(population), size=(2, size))
    a_wins = (rank[a] < rank[b]) | ((rank[a] == rank[b]) & (crowd[a] >= crowd[b]))
    winners = np.where(a_wins, a, b)
    return np.stack([np.asarray(population[k], dtype=bool) for k in winners])


def row_crossover(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Uniform crossover of whole client rows: each child row comes from one parent, so budgets hold."""
    take = rng.random(first.shape[:2]) < 0.5
    child_a = np.where(take[..., None], first, second)
    child_b = np.where(take[..., None], second, first)
    return child_a, child_b
