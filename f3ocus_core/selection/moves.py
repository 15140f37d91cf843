"""Budget-keeping moves, and the optional Lagrangian start of the metaheuristics.

Three kinds of move change one assignment and never break a budget:

* swap: client ``i`` drops a layer ``l`` it trains and takes a layer ``l'`` it does not;
  ``dI = S[i, l'] - S[i, l]`` and ``d(sum n**2) = 2 (n_l' - n_l + 1)``;
* exchange: clients ``i`` and ``j`` trade, ``i`` gives ``l`` to ``j`` and takes ``l'`` from it
  (``l`` trained only by ``i``, ``l'`` only by ``j``); coverage is unchanged and
  ``dI = (S[i, l'] - S[j, l']) + (S[j, l] - S[i, l])``, a sum of two independent terms, so the best
  exchange of a pair costs O(L);
* with ``exact_budget=False`` also drop and add, which change ``T = sum n`` and hence
  ``L * V = sum n**2 - T**2 / L``.

Exchanges matter most on the balanced end of the front: there every swap raises the variance, and
only coordinated changes of two clients can raise the importance at the same coverage.
"""

from __future__ import annotations

import numpy as np

from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.problem import Problem
from f3ocus_core.selection.transport import polish


def lagrangian_assignments(problem: Problem, count: int, max_rounds: int = 30) -> np.ndarray:
    """``count`` assignments spread along the front: local optima of ``I - lam * (L * V)``.

    ``lam`` runs over 0 and a geometric grid from the multiplier at which swaps away from the top-b
    start to pay (``_first_multiplier``) to ``max(S)`` (beyond which no swap that raises the variance
    pays). Each search starts at the clients' top-b and alternates best-improvement swap (and
    drop/add) sweeps with exchange sweeps until neither improves; all ``count`` searches run
    together, vectorised. They lie close to the supported points of the front (the vertices of its
    convex hull); a metaheuristic may start from them (parameter ``lagrangian_start``).
    """
    n_clients, n_layers = problem.n_clients, problem.n_layers
    if count <= 0:
        return np.zeros((0, n_clients, n_layers), dtype=bool)
    top = problem.top_b()
    lam_max = max(float(problem.scores.max()), 1e-12)
    lam_min = min(max(_first_multiplier(problem.scores, top), 1e-9 * lam_max), lam_max / 10)
    lams = np.concatenate([[0.0], np.geomspace(lam_min, lam_max, max(count - 1, 1))])[:count]
    masks = np.repeat(top[None], count, axis=0)
    for _ in range(max_rounds):
        _single_client_descent(problem, masks, lams, max_rounds)
        if not _exchange_sweep(problem, masks):
            break
    return masks


_LAM_QUANTILE = 0.01


def _first_multiplier(scores: np.ndarray, masks: np.ndarray) -> float:
    """A low quantile of the multipliers at which single swaps from ``masks`` start to pay.

    A swap of client ``i`` from ``l`` to ``l'`` lowers ``sum n**2`` by ``r = 2 (n_l - n_l' - 1)`` at an
    importance loss ``d = S[i, l] - S[i, l']``, and improves ``I - lam * sum n**2`` once ``lam > d / r``.
    The minimum is often 0 (ties), so the 1% quantile is used as the low end of the grid.
    ``inf`` when no swap lowers the variance.
    """
    counts = masks.sum(axis=0)
    loss = scores[:, :, None] - scores[:, None, :]
    relief = 2.0 * (counts[:, None] - counts[None, :] - 1)
    usable = masks[:, :, None] & ~masks[:, None, :] & (relief > 0)[None]
    if not usable.any():
        return np.inf
    ratio = (np.maximum(loss, 0.0) / np.where(relief > 0, relief, 1.0)[None])[usable]
    return float(np.quantile(ratio, _LAM_QUANTILE))


def initial_population(
    problem: Problem, rng: np.random.Generator, size: int, lagrangian_start: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``size`` assignments, and all ``lagrangian_start`` Lagrangian assignments.

    With at least as many Lagrangian assignments as places, the population takes them evenly spread
    along the multiplier grid (both extremes included); otherwise all of them plus uniformly random
    feasible assignments. With ``lagrangian_start=0`` the population is uniformly random.
    """
    start = lagrangian_assignments(problem, lagrangian_start)
    if lagrangian_start >= size:
        return start[np.unique(np.linspace(0, lagrangian_start - 1, size).round().astype(int))], start
    return np.concatenate([start, problem.random_masks(rng, size - lagrangian_start)]), start


def first_population(
    problem: Problem, rng: np.random.Generator, size: int, lagrangian_start: int, polished: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Archive, int]:
    """The first population of a population-based selector, ready to iterate.

    Returns the ``size`` starting assignments (with ``polished``, each made the most important one of
    its coverage profile, :func:`f3ocus_core.selection.transport.polish`), their importance and
    variance, an archive that already holds them and every Lagrangian assignment, and the number of
    evaluations spent so far.
    """
    masks, start = initial_population(problem, rng, size, lagrangian_start)
    if polished:
        masks = polish(problem, masks)
    importance, variance = problem.evaluate(masks)
    archive = Archive()
    archive.update(start, *problem.evaluate(start))
    archive.update(masks, importance, variance)
    return masks, importance, variance, archive, size + len(start)


def mutate(
    problem: Problem,
    masks: np.ndarray,
    rng: np.random.Generator,
    rate: float,
    guided: float = 0.5,
    exchange: float = 0.3,
) -> np.ndarray:
    """A mutated copy of a population made of budget-keeping moves.

    Each assignment gets ``1 + Poisson(rate - 1)`` moves (``rate`` is the mean number of moves). A
    move is an exchange between two random clients with probability ``exchange`` (needs two
    clients), otherwise a single-client move: a swap, or with ``exact_budget=False`` a drop or an add
    (a third of the time). With probability ``guided`` the move is greedy: a swap drops the trained
    layer with the highest coverage and takes the untrained one with the lowest (ties by score), an
    exchange takes the best trade of the pair; otherwise the layers are uniform at random.
    """
    masks = np.array(masks, dtype=bool, copy=True)
    size = len(masks)
    moves = 1 + rng.poisson(max(rate - 1.0, 0.0), size=size)
    members = np.arange(size)
    for step in range(int(moves.max(initial=0))):
        active = members[moves > step]
        if active.size == 0:
            break
        pair = rng.random(active.size) < (exchange if problem.n_clients > 1 else 0.0)
        guide = rng.random(active.size) < guided
        done = np.zeros(active.size, dtype=bool)
        if pair.any():
            done[pair] = _random_exchange(problem, masks, active[pair], guide[pair], rng)
        rest = ~done
        if rest.any():
            _random_single(problem, masks, active[rest], guide[rest], rng)
    return masks


def _random_single(
    problem: Problem, masks: np.ndarray, active: np.ndarray, guide: np.ndarray, rng: np.random.Generator
) -> None:
    """One swap (or drop/add) of a random client in each assignment ``active``, in place."""
    n_layers = problem.n_layers
    client = rng.integers(problem.n_clients, size=active.size)
    row = masks[active, client]
    counts = masks[active].sum(axis=1)
    scores = problem.scores[client]
    noise = rng.random((active.size, n_layers))
    drop_key = np.where(guide[:, None], counts - 1e-3 * scores + 1e-6 * noise, noise)
    add_key = np.where(guide[:, None], -counts + 1e-3 * scores + 1e-6 * noise, noise)
    drop = np.where(row, drop_key, -np.inf).argmax(axis=1)
    add = np.where(row, -np.inf, add_key).argmax(axis=1)
    size = row.sum(axis=1)
    kind = np.zeros(active.size, dtype=int)
    if not problem.exact_budget:
        kind = np.where(rng.random(active.size) < 1 / 3, rng.integers(1, 3, size=active.size), 0)
        kind = np.where((kind == 1) & (size <= 1), 0, kind)
        kind = np.where((kind == 2) & (size >= problem.budgets[client]), 0, kind)
    swap_ok = (size >= 1) & (size < n_layers)
    do_drop = ((kind == 0) & swap_ok) | (kind == 1)
    do_add = ((kind == 0) & swap_ok) | (kind == 2)
    masks[active[do_drop], client[do_drop], drop[do_drop]] = False
    masks[active[do_add], client[do_add], add[do_add]] = True


def _random_exchange(
    problem: Problem, masks: np.ndarray, active: np.ndarray, guide: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One exchange between two random clients of each assignment ``active``, in place.

    Returns which assignments were changed (two clients with identical rows cannot trade).
    """
    n_clients, n_layers = problem.n_clients, problem.n_layers
    first = rng.integers(n_clients, size=active.size)
    second = (first + rng.integers(1, n_clients, size=active.size)) % n_clients
    own, other = masks[active, first], masks[active, second]
    give = own & ~other
    take = other & ~own
    ok = give.any(axis=1) & take.any(axis=1)
    s_first, s_second = problem.scores[first], problem.scores[second]
    noise = rng.random((2, active.size, n_layers))
    give_key = np.where(guide[:, None], s_second - s_first + 1e-9 * noise[0], noise[0])
    take_key = np.where(guide[:, None], s_first - s_second + 1e-9 * noise[1], noise[1])
    l_give = np.where(give, give_key, -np.inf).argmax(axis=1)
    l_take = np.where(take, take_key, -np.inf).argmax(axis=1)
    a, i, j, lg, lt = active[ok], first[ok], second[ok], l_give[ok], l_take[ok]
    masks[a, i, lg] = False
    masks[a, j, lg] = True
    masks[a, j, lt] = False
    masks[a, i, lt] = True
    return ok


def _single_client_descent(problem: Problem, masks: np.ndarray, lams: np.ndarray, max_sweeps: int) -> None:
    """Best single-client move per client, sweep after sweep, until none improves ``I - lam L V``."""
    scores = problem.scores
    count = len(masks)
    n_layers = problem.n_layers
    rows = np.arange(count)
    counts = masks.sum(axis=1).astype(float)
    total = counts.sum(axis=1)
    for _ in range(max_sweeps):
        changed = False
        for i in range(problem.n_clients):
            row = masks[:, i, :]
            value = scores[i][None, :] - 2.0 * lams[:, None] * counts
            drop_value = np.where(row, value, np.inf)
            add_value = np.where(row, -np.inf, value)
            drop = drop_value.argmin(axis=1)
            add = add_value.argmax(axis=1)
            swap = add_value[rows, add] - drop_value[rows, drop] - 2.0 * lams
            gains = [np.where(np.isfinite(swap), swap, -np.inf)]
            if not problem.exact_budget:
                size = row.sum(axis=1)
                only_drop = -scores[i][drop] + lams * (2 * counts[rows, drop] - 1 - (2 * total - 1) / n_layers)
                only_add = scores[i][add] - lams * (2 * counts[rows, add] + 1 - (2 * total + 1) / n_layers)
                gains += [
                    np.where(size > 1, only_drop, -np.inf),
                    np.where(size < problem.budgets[i], only_add, -np.inf),
                ]
            stacked = np.stack(gains)
            move, best = stacked.argmax(axis=0), stacked.max(axis=0)
            act = best > 1e-12
            if not act.any():
                continue
            changed = True
            do_drop, do_add = act & (move != 2), act & (move != 1)
            masks[rows[do_drop], i, drop[do_drop]] = False
            counts[rows[do_drop], drop[do_drop]] -= 1
            masks[rows[do_add], i, add[do_add]] = True
            counts[rows[do_add], add[do_add]] += 1
            total += do_add.astype(float) - do_drop.astype(float)
        if not changed:
            return


def _exchange_sweep(problem: Problem, masks: np.ndarray) -> bool:
    """For each client, the best improving exchange with any other client; True if any was made.

    Works on the lists of trained layers (at most ``max b_i`` per client) rather than on all ``L``
    layers: the gain of client ``i`` trading with ``j`` is the best ``S[i, l'] - S[j, l']`` over the
    layers ``l'`` of ``j`` that ``i`` lacks plus the best ``S[j, l] - S[i, l]`` over the layers ``l`` of
    ``i`` that ``j`` lacks.
    """
    scores = problem.scores
    count, n_clients, _ = masks.shape
    rows = np.arange(count)
    clients = np.arange(n_clients)[None, :, None]
    lists = _layer_lists(masks)
    safe = np.maximum(lists, 0)
    improved = False
    for i in range(n_clients):
        own, own_safe = lists[:, i, :], safe[:, i, :]
        partner_has = np.take_along_axis(masks, np.broadcast_to(own_safe[:, None, :], lists.shape), axis=2)
        give_value = scores.T[own_safe].transpose(0, 2, 1) - scores[i][own_safe][:, None, :]
        give_value = np.where((own >= 0)[:, None, :] & ~partner_has, give_value, -np.inf)
        i_has = np.take_along_axis(masks[:, i, :], safe.reshape(count, -1), axis=1).reshape(lists.shape)
        take_value = scores[i][safe] - scores[clients, safe]
        take_value = np.where((lists >= 0) & ~i_has, take_value, -np.inf)
        gain = give_value.max(axis=2) + take_value.max(axis=2)
        gain[:, i] = -np.inf
        partner = gain.argmax(axis=1)
        act = gain[rows, partner] > 1e-12
        if not act.any():
            continue
        improved = True
        a, j = rows[act], partner[act]
        give_slot = give_value[a, j].argmax(axis=1)
        take_slot = take_value[a, j].argmax(axis=1)
        lg, lt = lists[a, i, give_slot], lists[a, j, take_slot]
        masks[a, i, lg] = False
        masks[a, j, lg] = True
        masks[a, j, lt] = False
        masks[a, i, lt] = True
        lists[a, i, give_slot] = lt
        lists[a, j, take_slot] = lg
        safe[a, i, give_slot] = lt
        safe[a, j, take_slot] = lg
    return improved


def _layer_lists(masks: np.ndarray) -> np.ndarray:
    """``(..., max count)`` indices of the trained layers of every row, padded with -1."""
    most = max(int(masks.sum(axis=-1).max(initial=0)), 1)
    order = np.argsort(~masks, axis=-1, kind="stable")[..., :most]
    return np.where(np.take_along_axis(masks, order, axis=-1), order, -1)
