"""Multi-objective simulated annealing for the layer-assignment problem.

A family of Metropolis chains, one per scalarising weight (Ulungu, Teghem, Fortemps and Tuyttens,
1999, "MOSA"; Serafini, 1994): chain ``k`` of ``K`` uses ``w_k = k / (K - 1)`` and the objective

    f_k(m) = w_k * I(m) / I_span - (1 - w_k) * V(m) / V_span,

with ``I_span`` and ``V_span`` the distances between the clients' top-b and the most balanced
Lagrangian assignment, so both terms are on the same scale. Each step every chain proposes one
budget-keeping move (:mod:`f3ocus_core.selection.moves`): an exchange between two clients with
probability ``exchange``, otherwise a swap of one client (with ``exact_budget=False`` a third of these
drop or add a layer instead), evaluated incrementally from the edited entries and the coverage counts,
and accepts it with probability ``min(1, exp(d f_k / T))``. The temperature cools geometrically from
``t_start`` to ``t_end`` (in units of the normalised objective). Every proposal that no archive member
dominates enters the archive, so the non-supported front points that chains pass by are kept, not only
each chain's final state. Every ``restart`` steps the chains "return to base": each restarts from an
archive member picked by a crowding tournament, which sends chains to sparse parts of the front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.memetic import ParetoLocalSearch, polish_if
from f3ocus_core.selection.moves import lagrangian_assignments
from f3ocus_core.selection.params import MetaheuristicParams, at_least, positive, unit
from f3ocus_core.selection.problem import Problem, coverage_variance
from f3ocus_core.selection.transport import polish


@dataclass(frozen=True)
class SAParams(MetaheuristicParams):
    """Hyperparameters of :func:`run`.

    chains : int
        Parallel chains (scalarising weights), at least 2.
    steps : int
        Proposals per chain.
    t_start : float
        Initial temperature.
    t_end : float
        Final temperature.
    exchange : float
        Share of proposals that are exchanges between two clients (coverage unchanged).
    restart : int
        Every ``restart`` steps each chain returns to base: it restarts from an archive member chosen
        by a crowding tournament (Suppapitnarm, Seffen, Parks and Clarkson, 2000). 0 disables.
    The shared settings (``lagrangian_start``, ``polish``, ``local_search``, ``hull_walk``) are
    those of :class:`~f3ocus_core.selection.params.MetaheuristicParams`; here the Lagrangian variants
    are spread over the chains in order of balance (the most balanced to the chain that weighs
    variance most), ``polish`` applies to the starting states and every proposal that enters the
    archive, and local search runs at every return to base.
    """

    chains: int = 16
    steps: int = 250
    exchange: float = 0.3
    restart: int = 10
    t_start: float = 0.05
    t_end: float = 0.0005
    algorithm: ClassVar[str] = "sa"

    def check(self) -> None:
        super().check()
        at_least("chains", self.chains, 2, "sa")
        positive("steps", self.steps, "sa", allow_zero=True)
        positive("t_start", self.t_start, "sa")
        positive("t_end", self.t_end, "sa")
        unit("exchange", self.exchange, "sa")
        positive("restart", self.restart, "sa", allow_zero=True)


def run(problem: Problem, rng: np.random.Generator, params: SAParams) -> tuple[Archive, dict]:
    """Anneal all chains and return the archive of non-dominated assignments."""
    chains = params.chains
    weights = np.linspace(0.0, 1.0, chains)
    anchors = lagrangian_assignments(problem, 2)
    anchor_imp, anchor_var = problem.evaluate(anchors)
    imp_span = max(float(anchor_imp[0] - anchor_imp[-1]), 1e-9)
    var_span = max(float(anchor_var[0] - anchor_var[-1]), 1e-9)
    if params.lagrangian_start:
        start = lagrangian_assignments(problem, params.lagrangian_start)
        masks = start[np.linspace(params.lagrangian_start - 1, 0, chains).round().astype(int)]
    else:
        start, masks = problem.random_masks(rng, 0), problem.random_masks(rng, chains)
    masks = polish_if(problem, masks, params.polish)
    local = ParetoLocalSearch(problem, params.hull_walk)
    evaluations = chains
    counts = masks.sum(axis=1).astype(np.int64)
    importance, variance = problem.evaluate(masks)
    archive = Archive()
    archive.update(start, *problem.evaluate(start))
    archive.update(masks, importance, variance)
    cooling = (params.t_end / params.t_start) ** (1.0 / max(params.steps - 1, 1))
    temperature = params.t_start
    chain = np.repeat(np.arange(chains)[:, None], 4, axis=1)
    for step in range(params.steps):
        if params.restart and step % params.restart == params.restart - 1:
            evaluations += local.step(archive, rng, params.local_search)
            masks = archive.masks(archive.sample(rng, chains))
            counts = masks.sum(axis=1).astype(np.int64)
            importance, variance = problem.evaluate(masks)
        edits = _propose(problem, masks, rng, params.exchange)
        clients, layers, _, valid = edits
        sign = _EDIT_SIGN * valid
        d_imp = (sign * problem.scores[clients, layers]).sum(axis=1)
        new_counts = counts.copy()
        np.add.at(new_counts, (chain, layers), sign)
        new_imp = importance + d_imp
        new_var = coverage_variance(new_counts)
        delta = weights * d_imp / imp_span - (1.0 - weights) * (new_var - variance) / var_span
        changed = valid.any(axis=1)
        accept = changed & ((delta >= 0) | (rng.random(chains) < np.exp(np.minimum(delta, 0.0) / temperature)))
        fresh = np.flatnonzero(changed & ~archive.covered(new_imp, new_var))
        if fresh.size:
            proposals = masks[fresh].copy()
            _apply(proposals, np.arange(fresh.size), *(e[fresh] for e in edits))
            if params.polish:
                proposals = polish(problem, proposals)
                archive.update(proposals, *problem.evaluate(proposals))
            else:
                archive.update(proposals, new_imp[fresh], new_var[fresh])
        moved = np.flatnonzero(accept)
        _apply(masks, moved, *(e[moved] for e in edits))
        counts[moved], importance[moved], variance[moved] = new_counts[moved], new_imp[moved], new_var[moved]
        temperature *= cooling
        evaluations += chains
    return archive, {"evaluations": evaluations}


_EDIT_VALUES = np.array([False, True, True, False])
_EDIT_SIGN = np.where(_EDIT_VALUES, 1, -1)


def _propose(
    problem: Problem, masks: np.ndarray, rng: np.random.Generator, exchange: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One random move per chain as up to four edits ``masks[k, client, layer] = value``.

    Returns ``(clients, layers, values, valid)``, each ``(K, 4)``; invalid edits are no-ops.
    """
    chains, n_clients, n_layers = masks.shape
    rows = np.arange(chains)
    first = rng.integers(n_clients, size=(chains,))
    second = (first + rng.integers(1, max(n_clients, 2), size=chains)) % n_clients
    own, other = masks[rows, first], masks[rows, second]
    noise = rng.random((4, chains, n_layers))
    drop = np.where(own, noise[0], -1.0).argmax(axis=1)
    add = np.where(own, -1.0, noise[1]).argmax(axis=1)
    give = np.where(own & ~other, noise[2], -1.0).argmax(axis=1)
    take = np.where(other & ~own, noise[3], -1.0).argmax(axis=1)
    size = own.sum(axis=1)
    can_trade = (own & ~other).any(axis=1) & (other & ~own).any(axis=1) & (n_clients > 1)
    kind = np.where(rng.random(chains) < exchange, 3, 0)
    if not problem.exact_budget:
        kind = np.where((kind == 0) & (rng.random(chains) < 1 / 3), rng.integers(1, 3, size=chains), kind)
        kind = np.where((kind == 1) & (size <= 1), 0, kind)
        kind = np.where((kind == 2) & (size >= problem.budgets[first]), 0, kind)
    kind = np.where((kind == 3) & ~can_trade, 0, kind)
    swap_ok = size < n_layers
    trade = kind == 3
    clients = np.empty((chains, 4), dtype=np.int64)
    clients[:, :2], clients[:, 2:] = first[:, None], second[:, None]
    layers = np.empty((chains, 4), dtype=np.int64)
    layers[:, 0] = np.where(trade, give, drop)
    layers[:, 1] = np.where(trade, take, add)
    layers[:, 2], layers[:, 3] = give, take
    valid = np.empty((chains, 4), dtype=bool)
    valid[:, 0] = ((kind == 0) & swap_ok) | (kind == 1) | trade
    valid[:, 1] = ((kind == 0) & swap_ok) | (kind == 2) | trade
    valid[:, 2] = valid[:, 3] = trade
    return clients, layers, np.broadcast_to(_EDIT_VALUES, (chains, 4)), valid


def _apply(
    masks: np.ndarray, index: np.ndarray, clients: np.ndarray, layers: np.ndarray, values: np.ndarray, valid: np.ndarray
) -> None:
    """Apply edits to ``masks[index]`` in place."""
    k, e = np.nonzero(valid)
    masks[index[k], clients[k, e], layers[k, e]] = values[k, e]
