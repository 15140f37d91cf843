"""Multi-objective particle swarm optimisation (MOPSO) for the layer-assignment problem.

The multi-objective scheme is that of Coello Coello, Pulido and Lechuga (2004): an external
repository (the archive) of non-dominated assignments supplies each particle's leader, chosen here by
a crowding-distance tournament (MOPSO-CD, Raquel and Naval, 2005); a particle keeps its personal best,
replaced when the new position dominates it or, when neither dominates, with probability 1/2; and a
turbulence (mutation) operator hits a share of the swarm that shrinks linearly to zero.

The move is the geometric PSO of Moraglio, Di Chio and Poli (2007) for binary spaces, which keeps the
budgets by construction. The classic update ``x <- w x + c1 r1 (pbest - x) + c2 r2 (leader - x)`` is
read as a weighted convex combination: every client row of the new position is copied from the
current position, the personal best or the leader with probabilities proportional to ``inertia``,
``cognitive`` and ``social``. (The sigmoid-velocity binary PSO of Kennedy and Eberhart, 1997, would
resample every bit each step and need a repair; on budgeted rows it degenerates to a random walk.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.memetic import ParetoLocalSearch, polish_if, vary
from f3ocus_core.selection.moves import first_population
from f3ocus_core.selection.params import MetaheuristicParams, positive, unit
from f3ocus_core.selection.problem import Problem


@dataclass(frozen=True)
class MOPSOParams(MetaheuristicParams):
    """Hyperparameters of :func:`run`.

    particles : int
        Swarm size.
    iterations : int
        Number of position updates.
    inertia : float
        Weight of the particle's current position in the update.
    cognitive : float
        Weight of the particle's personal best.
    social : float
        Weight of the leader drawn from the archive.
    turbulence : float
        Share of particles mutated in the first iteration, falling linearly to ``turbulence / 4``.
    moves : float
        Mean number of budget-keeping moves a turbulent particle gets.
    The shared settings (``lagrangian_start``, ``polish``, ``local_search``, ``hull_walk``) are
    those of :class:`~f3ocus_core.selection.params.MetaheuristicParams`.
    """

    particles: int = 10
    iterations: int = 20
    inertia: float = 0.1
    cognitive: float = 0.1
    social: float = 0.8
    turbulence: float = 1.0
    moves: float = 1.5
    algorithm: ClassVar[str] = "mopso"

    def check(self) -> None:
        super().check()
        positive("particles", self.particles, "mopso")
        positive("iterations", self.iterations, "mopso", allow_zero=True)
        for name in ("inertia", "cognitive", "social"):
            positive(name, getattr(self, name), "mopso", allow_zero=True)
        positive("inertia + cognitive + social", self.inertia + self.cognitive + self.social, "mopso")
        unit("turbulence", self.turbulence, "mopso")
        positive("moves", self.moves, "mopso")


def run(problem: Problem, rng: np.random.Generator, params: MOPSOParams) -> tuple[Archive, dict]:
    """Fly the swarm and return the repository of non-dominated assignments."""
    size = params.particles
    position, importance, variance, archive, evaluations = first_population(
        problem, rng, size, params.lagrangian_start, params.polish
    )
    local = ParetoLocalSearch(problem, params.hull_walk)
    best, best_imp, best_var = position.copy(), importance.copy(), variance.copy()
    weights = np.array([params.inertia, params.cognitive, params.social], dtype=float)
    cumulative = np.cumsum(weights / weights.sum())
    for step in range(params.iterations):
        leaders = archive.masks(archive.sample(rng, size))
        source = np.searchsorted(cumulative, rng.random((size, problem.n_clients)), side="right")
        source = np.minimum(source, 2)[..., None]
        position = polish_if(
            problem, np.where(source == 0, position, np.where(source == 1, best, leaders)), params.polish
        )
        fading = 1.0 - 0.75 * step / max(params.iterations - 1, 1)
        shaken = rng.random(size) < params.turbulence * fading
        if shaken.any():
            position[shaken] = vary(problem, position[shaken], rng, params.moves, params.polish)
        importance, variance = problem.evaluate(position)
        evaluations += size
        archive.update(position, importance, variance)
        evaluations += local.step(archive, rng, params.local_search)
        dominates = (
            (importance >= best_imp) & (variance <= best_var) & ((importance > best_imp) | (variance < best_var))
        )
        dominated = (importance <= best_imp) & (variance >= best_var)
        replace = dominates | (~dominated & (rng.random(size) < 0.5))
        best[replace] = position[replace]
        best_imp[replace], best_var[replace] = importance[replace], variance[replace]
    return archive, {"evaluations": evaluations}
