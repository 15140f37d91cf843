"""Ant colony optimisation for the layer-assignment problem: Pareto ACO with one trail per objective.

After Doerner, Gutjahr, Hartl, Strauss and Stummer (2004, "Pareto ant colony optimization"), with the
min-max trail bounds of Stuetzle and Hoos (2000). There are two pheromone matrices over (client,
layer): ``tau_imp`` learns what gives importance, ``tau_bal`` what gives balanced coverage. Ant ``k``
of a colony of ``K`` has the weight ``w_k = k / (K - 1)`` and visits the clients in its own random
order; for client ``i`` it draws ``b_i`` distinct layers with probabilities

    p(l) ~ (w_k tau_imp[i, l] + (1 - w_k) tau_bal[i, l])**alpha * eta[i, l]**beta,
    eta[i, l] = (S[i, l] / max_l S[i, l] + eps)**w_k * (1 / (1 + n_l))**(1 - w_k),

where ``n_l`` is the coverage the ant has built so far: the layer scores are the heuristic
desirability, as in the paper, blended with a balance heuristic. For speed with many clients, an
ant's clients choose in ``stages`` groups (all of a group at once, on the coverage of the earlier
groups); with ``stages >= N`` the construction is strictly client by client. Drawing without replacement uses the
Gumbel-top-k trick. With ``exact_budget=False`` the ant first draws how many layers the client gets
from a third trail over counts.

Daemon actions (Dorigo and Stuetzle, 2004) refine the archive: each colony, ``daemon`` archive
members chosen by a crowding tournament get one budget-keeping move (``moves.mutate``) and are offered
back. After each colony the trails evaporate by ``rho``; the best and second-best ant for each objective
deposit 1 and 1/2 on that objective's trail (and on the count trail); trails are clipped to
``[tau_min, tau_max]``. The archive of all non-dominated assignments is the result; with ``lagrangian_start``
it starts with the Lagrangian coverage-balancing variants of the clients' top-b, which also lay the
first trails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.memetic import ParetoLocalSearch, polish_if, vary
from f3ocus_core.selection.moves import lagrangian_assignments
from f3ocus_core.selection.params import MetaheuristicParams, at_least, positive, unit
from f3ocus_core.selection.problem import Problem


@dataclass(frozen=True)
class ACOParams(MetaheuristicParams):
    """Hyperparameters of :func:`run`.

    ants : int
        Ants per colony (at least 2).
    iterations : int
        Number of colonies.
    alpha : float
        Weight of the trails.
    beta : float
        Weight of the heuristic desirability.
    rho : float
        Evaporation rate per colony.
    tau_min : float
        Lower trail bound (keeps every choice possible).
    tau_max : float
        Upper trail bound.
    daemon : int
        Daemon actions per colony: archive members (crowding tournament) that each get one
        budget-keeping move (see ``moves.mutate``); improvements enter the archive. 0 disables.
    stages : int
        Construction stages: an ant's clients (in its random order) choose in this many groups, each
        group seeing the coverage built by the earlier ones (``stages >= N``: one client at a time).
    The shared settings (``lagrangian_start``, ``polish``, ``local_search``, ``hull_walk``) are
    those of :class:`~f3ocus_core.selection.params.MetaheuristicParams`; here the Lagrangian variants
    also lay the first trails (0: uniform trails and an empty archive).
    """

    ants: int = 8
    iterations: int = 16
    alpha: float = 1.0
    beta: float = 2.0
    rho: float = 0.1
    tau_min: float = 0.05
    tau_max: float = 5.0
    daemon: int = 8
    stages: int = 10
    algorithm: ClassVar[str] = "aco"

    def check(self) -> None:
        super().check()
        at_least("ants", self.ants, 2, "aco")
        positive("iterations", self.iterations, "aco", allow_zero=True)
        positive("alpha", self.alpha, "aco", allow_zero=True)
        positive("beta", self.beta, "aco", allow_zero=True)
        unit("rho", self.rho, "aco")
        positive("tau_min", self.tau_min, "aco")
        positive("daemon", self.daemon, "aco", allow_zero=True)
        positive("stages", self.stages, "aco")
        if self.iterations == 0 and self.lagrangian_start == 0:
            raise ValueError(
                "selector 'aco' with iterations=0 and lagrangian_start=0 builds no assignment; set one of them above 0."
            )
        if self.tau_max < self.tau_min:
            raise ValueError(
                f"parameter 'tau_max' of selector 'aco' must be >= tau_min ({self.tau_min}); got {self.tau_max}."
            )


def run(problem: Problem, rng: np.random.Generator, params: ACOParams) -> tuple[Archive, dict]:
    """Run the colonies and return the archive of non-dominated assignments."""
    n_clients, n_layers = problem.n_clients, problem.n_layers
    archive = Archive()
    tau_imp = np.ones((n_clients, n_layers))
    tau_bal = np.ones((n_clients, n_layers))
    tau_count = np.ones((n_clients, int(problem.budgets.max())))
    weights = np.linspace(0.0, 1.0, params.ants)
    evaluations = 0
    local = ParetoLocalSearch(problem, params.hull_walk)
    if params.lagrangian_start:
        start = lagrangian_assignments(problem, params.lagrangian_start)
        importance, variance = problem.evaluate(start)
        archive.update(start, importance, variance)
        evaluations += len(start)
        _deposit(tau_imp, tau_bal, tau_count, start, importance, variance, params)
    top = problem.scores.max(axis=1, keepdims=True)
    desirability = np.log(np.where(top > 0, problem.scores / np.where(top > 0, top, 1.0), 0.0) + 1e-3)
    for _ in range(params.iterations):
        masks = polish_if(
            problem, _construct(problem, rng, tau_imp, tau_bal, tau_count, desirability, weights, params), params.polish
        )
        importance, variance = problem.evaluate(masks)
        evaluations += len(masks)
        archive.update(masks, importance, variance)
        if params.daemon:
            polished = vary(problem, archive.masks(archive.sample(rng, params.daemon)), rng, 1.0, params.polish)
            archive.update(polished, *problem.evaluate(polished))
            evaluations += params.daemon
        evaluations += local.step(archive, rng, params.local_search)
        tau_imp *= 1.0 - params.rho
        tau_bal *= 1.0 - params.rho
        tau_count *= 1.0 - params.rho
        _deposit(tau_imp, tau_bal, tau_count, masks, importance, variance, params)
    return archive, {"evaluations": evaluations}


def _construct(
    problem: Problem,
    rng: np.random.Generator,
    tau_imp: np.ndarray,
    tau_bal: np.ndarray,
    tau_count: np.ndarray,
    desirability: np.ndarray,
    weights: np.ndarray,
    params: ACOParams,
) -> np.ndarray:
    """One colony: every ant builds a full assignment, its clients in ``stages`` groups in its own order."""
    ants = len(weights)
    n_clients, n_layers = problem.n_clients, problem.n_layers
    masks = np.zeros((ants, n_clients, n_layers), dtype=bool)
    coverage = np.zeros((ants, n_layers))
    order = rng.permuted(np.tile(np.arange(n_clients), (ants, 1)), axis=1)
    rows = np.arange(ants)[:, None]
    w = weights[:, None, None]
    for group in np.array_split(np.arange(n_clients), min(params.stages, n_clients)):
        client = order[:, group]
        trail = w * tau_imp[client] + (1.0 - w) * tau_bal[client]
        eta = w * desirability[client] - (1.0 - w) * np.log1p(coverage)[:, None, :]
        keys = params.alpha * np.log(trail) + params.beta * eta + rng.gumbel(size=trail.shape)
        counts = problem.budgets[client]
        if not problem.exact_budget:
            count_keys = np.log(tau_count[client]) + rng.gumbel(size=tau_count[client].shape)
            count_keys[np.arange(tau_count.shape[1]) >= counts[..., None]] = -np.inf
            counts = count_keys.argmax(axis=-1) + 1
        chosen = keys >= _kth_largest(keys, counts)[..., None]
        masks[rows, client] = chosen
        coverage += chosen.sum(axis=1)
    return masks


def _kth_largest(keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The ``k``-th largest entry along the last axis, ``k`` varying per row (Gumbel keys: no ties)."""
    most = int(k.max())
    top = -np.sort(np.partition(-keys, most - 1, axis=-1)[..., :most], axis=-1)
    return np.take_along_axis(top, (k - 1)[..., None], axis=-1)[..., 0]


def _deposit(
    tau_imp: np.ndarray,
    tau_bal: np.ndarray,
    tau_count: np.ndarray,
    masks: np.ndarray,
    importance: np.ndarray,
    variance: np.ndarray,
    params: ACOParams,
) -> None:
    """Best and second-best ant per objective reinforce that objective's trail; clip to the bounds."""
    for trail, ranking in (
        (tau_imp, np.argsort(-importance, kind="stable")),
        (tau_bal, np.lexsort((-importance, variance))),
    ):
        for amount, index in zip((1.0, 0.5), ranking[:2]):
            trail += amount * masks[index]
            sizes = masks[index].sum(axis=1)
            tau_count[np.arange(len(sizes)), sizes - 1] += 0.5 * amount
    for trail in (tau_imp, tau_bal, tau_count):
        np.clip(trail, params.tau_min, params.tau_max, out=trail)
