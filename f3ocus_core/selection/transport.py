"""The transportation problem behind a coverage profile: best importance for given counts, exact moves.

The coverage variance depends only on the per-layer counts ``n_l``. For a fixed profile ``n`` the most
important assignment is a transportation problem (a min-cost flow: source -> client ``i`` with
capacity ``b_i`` (``[1, b_i]`` with ``exact_budget=False``), client ``i`` -> layer ``l`` with capacity 1
and gain ``S[i, l]``, layer ``l`` -> sink with flow exactly ``n_l``); its constraint matrix is totally
unimodular, so the flow optimum is an assignment.

Everything here works on the *transfer graph* of an assignment, which collapses the flow's residual
graph onto ``K = L + 1`` nodes, the layers and a *pool* node (client sizes, used only with
``exact_budget=False``):

* arc ``a -> c`` (layers): a client that trains ``a`` and not ``c`` swaps ``a`` for ``c``; weight
  ``max_i (S[i, c] - S[i, a])``;
* arc ``a -> pool``: a client with more than one layer drops ``a``; weight ``max_i (-S[i, a])``;
* arc ``pool -> c``: a client below its budget takes ``c``; weight ``max_j S[j, c]``.

A cycle changes no count; a path ``a -> c`` moves one unit of coverage from ``a`` to ``c`` (from or to
the pool: one unit less or more in all). Flow theory gives the two facts used here:

1. an assignment is the best for its profile exactly when its transfer graph has no cycle of positive
   weight; :func:`polish` cancels positive cycles until none is left (Klein's cycle cancelling), which
   makes any assignment the most important one with the same coverage counts;
2. from such an assignment, the best importance after moving one unit of coverage from ``a`` to ``c``
   is the current importance plus the longest path ``a -> c`` (successive shortest paths), and applying
   that path gives the best assignment of the new profile. :func:`transfer_moves` computes all of them
   at once (Floyd-Warshall), so every neighbour profile of an archive member is evaluated exactly.

Every path and cycle used is simple in the collapsed graph, so each client-layer entry it changes is
changed once and the budgets hold.
"""

from __future__ import annotations

import numpy as np

from f3ocus_core.selection.problem import Problem

#: Gains at or below this count as zero (scores are row-normalised, so well above float noise).
_TOL = 1e-12


def transfer_graph(problem: Problem, masks: np.ndarray) -> np.ndarray:
    """Arc weights ``(P, K, K)`` of a population's transfer graphs (absent arcs weigh ``-inf``).

    Node ``L`` is the pool; its arcs exist only with ``exact_budget=False``. Which client gives an
    arc is looked up only for the arcs applied (:func:`arc_clients`).
    """
    masks = np.asarray(masks, dtype=bool)
    count, _, n_layers = masks.shape
    scores = problem.scores
    nodes = n_layers + 1
    gain = np.full((count, nodes, nodes), -np.inf)
    member, layer, client = np.nonzero(masks.transpose(0, 2, 1))
    if member.size:
        values = scores[client] - scores[client, layer][:, None]
        values[masks[member, client]] = -np.inf
        key = member * n_layers + layer
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        rows, cols = member[starts], layer[starts]
        gain[rows, cols, :n_layers] = np.maximum.reduceat(values, starts, axis=0)
    if not problem.exact_budget:
        size = masks.sum(axis=2)
        can_drop = masks & (size > 1)[..., None]
        can_add = ~masks & (size < problem.budgets)[..., None]
        gain[:, :n_layers, n_layers] = np.where(can_drop, -scores, -np.inf).max(axis=1)
        gain[:, n_layers, :n_layers] = np.where(can_add, scores, -np.inf).max(axis=1)
    return gain


def arc_clients(
    problem: Problem, masks: np.ndarray, member: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """The client that gives each transfer arc ``start[k] -> end[k]`` of ``masks[member[k]]`` its weight.

    Arc ``a -> c`` (layers): the client training ``a`` and not ``c`` with the largest
    ``S[i, c] - S[i, a]``; ``a -> pool``: the client with more than one layer that loses least by
    dropping ``a``; ``pool -> c``: the client below its budget that gains most by taking ``c``.
    Among equals the highest index, -1 where no client gives the arc.
    """
    masks = np.asarray(masks, dtype=bool)
    n_clients, n_layers = masks.shape[1:]
    member, start, end = (np.asarray(x, dtype=np.int64) for x in (member, start, end))
    scores = np.concatenate([problem.scores, np.zeros((n_clients, 1))], axis=1).T
    trains = np.concatenate([masks, np.zeros((len(masks), n_clients, 1), dtype=bool)], axis=2)
    trains_start, trains_end = trains[member, :, start], trains[member, :, end]
    drop, add = (end == n_layers)[:, None], (start == n_layers)[:, None]
    size = masks[member].sum(axis=2)
    eligible = np.where(add, size < problem.budgets, trains_start) & (drop | ~trains_end)
    eligible &= ~drop | (size > 1)
    values = np.where(eligible, scores[end] - scores[start], -np.inf)
    best = values.max(axis=1, initial=-np.inf)
    last = n_clients - 1 - (values == best[:, None])[:, ::-1].argmax(axis=1)
    return np.where(np.isfinite(best), last, -1)


def polish(problem: Problem, masks: np.ndarray, max_rounds: int = 10_000) -> np.ndarray:
    """The most important assignment with the same coverage counts, for each assignment given.

    Cancels positive cycles of the transfer graph until none is left. Each round, for every
    assignment: the positive two-node cycles that share no node, best first, each with all the
    profitable trades between its two layers at once (:func:`_trade`); where there are none, the
    cycles Bellman-Ford finds (all assignments together). The coverage counts never change and the
    importance never falls. Returns a new ``(P, N, L)`` array (a single ``(N, L)`` assignment gives
    ``(1, N, L)``).
    """
    masks = np.array(masks, dtype=bool, copy=True, ndmin=3)
    n_layers = masks.shape[2]
    active = np.arange(len(masks))
    for _ in range(max_rounds):
        if active.size == 0:
            return masks
        gain = transfer_graph(problem, masks[active])
        pairs = _trading_pairs(gain)
        pairs[:, 0] = active[pairs[:, 0]]
        pooled = pairs[:, 2] == n_layers
        _trade(problem, masks, pairs[~pooled])
        arcs = [pairs[pooled], pairs[pooled][:, [0, 2, 1]]]
        traded = np.isin(active, pairs[:, 0])
        longer = np.flatnonzero(~traded)
        for k, cycles in zip(longer, _positive_cycles(gain[longer])):
            arcs += [
                np.array([(active[k], a, c) for a, c in zip(cycle[:-1].tolist(), cycle[1:].tolist())], dtype=np.int64)
                for cycle in cycles
            ]
            traded[k] = bool(cycles)
        arcs = np.concatenate(arcs).reshape(-1, 3)
        _apply_arcs(masks, arcs, arc_clients(problem, masks, *arcs.T))
        active = active[traded]
    raise RuntimeError(f"cycle cancelling did not finish in {max_rounds} rounds; this is a bug.")


def _trading_pairs(gain: np.ndarray) -> np.ndarray:
    """Positive two-node cycles ``a -> c -> a`` (``a < c``) of each graph that share no node, best first.

    Returns ``(T, 3)`` rows ``(graph, a, c)``.
    """
    both = gain + gain.transpose(0, 2, 1)
    member, first, second = np.nonzero(np.triu(both > _TOL, k=1))
    order = np.lexsort((-both[member, first, second], member))
    used: set[tuple[int, int]] = set()
    pairs = []
    for p, a, c in zip(member[order].tolist(), first[order].tolist(), second[order].tolist()):
        if (p, a) not in used and (p, c) not in used:
            used.update(((p, a), (p, c)))
            pairs.append((p, a, c))
    return np.array(pairs, dtype=np.int64).reshape(-1, 3)


def _trade(problem: Problem, masks: np.ndarray, pairs: np.ndarray) -> None:
    """Every profitable trade between layers ``a`` and ``c`` of ``masks[p]``, for rows ``(p, a, c)``, in place.

    The clients that train ``a`` and not ``c`` are ranked by what they gain moving to ``c``, those
    that train ``c`` and not ``a`` by what they gain moving to ``a``; the k-th of each trade while the
    two gains sum to more than zero (the best set of such trades). Rows of one assignment must share
    no layer.
    """
    if not len(pairs):
        return
    member, a, c = pairs.T
    scores = problem.scores
    has_a, has_c = masks[member, :, a], masks[member, :, c]
    to_c = np.where(has_a & ~has_c, scores[:, c].T - scores[:, a].T, -np.inf)
    to_a = np.where(has_c & ~has_a, scores[:, a].T - scores[:, c].T, -np.inf)
    order_c = np.argsort(-to_c, axis=1, kind="stable")
    order_a = np.argsort(-to_a, axis=1, kind="stable")
    total = np.take_along_axis(to_c, order_c, axis=1) + np.take_along_axis(to_a, order_a, axis=1)
    row, rank = np.nonzero(total > _TOL)
    movers_c, movers_a = order_c[row, rank], order_a[row, rank]
    member, a, c = member[row], a[row], c[row]
    masks[member, movers_c, a] = False
    masks[member, movers_c, c] = True
    masks[member, movers_a, c] = False
    masks[member, movers_a, a] = True


def transfer_moves(problem: Problem, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs longest paths of the transfer graphs of polished assignments (Floyd-Warshall).

    Returns ``(gain, hop)``: ``gain[p, a, c]`` is the exact change of the best importance when one
    unit of coverage moves from node ``a`` to node ``c`` (``-inf`` if impossible), ``hop[p, a, c]`` the
    node after ``a`` on that path. The assignments
    must be polished (no positive cycle), else the values are meaningless.
    """
    gain = transfer_graph(problem, masks)
    nodes = gain.shape[1]
    hop = np.broadcast_to(np.arange(nodes), gain.shape).copy()
    for k in range(nodes):
        through = gain[:, :, k : k + 1] + gain[:, k : k + 1, :]
        better = through > gain + _TOL
        np.copyto(gain, through, where=better)
        np.copyto(hop, np.broadcast_to(hop[:, :, k : k + 1], hop.shape), where=better)
    diagonal = np.arange(nodes)
    gain[:, diagonal, diagonal] = -np.inf
    return gain, hop


def moved_objectives(
    problem: Problem, masks: np.ndarray, importance: np.ndarray, gain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Importance and variance ``(P, K, K)`` after each unit move ``a -> c`` of :func:`transfer_moves`.

    The variance comes from integers: moving a unit from layer ``a`` to ``c`` changes ``sum n**2`` by
    ``2 (n_c - n_a + 1)``; a drop (to the pool) by ``1 - 2 n_a`` and the total by -1; an add by
    ``2 n_c + 1`` and +1.
    """
    counts = np.asarray(masks, dtype=bool).sum(axis=1).astype(np.int64)
    count, n_layers = counts.shape
    squares = (counts**2).sum(axis=1)[:, None, None]
    total = counts.sum(axis=1)[:, None, None]
    padded = np.concatenate([counts, np.zeros((count, 1), dtype=np.int64)], axis=1)
    square_change = 2 * (padded[:, None, :] - padded[:, :, None] + 1)
    square_change[:, :n_layers, n_layers] = 1 - 2 * counts
    square_change[:, n_layers, :n_layers] = 2 * counts + 1
    total_change = np.zeros((1, n_layers + 1, n_layers + 1), dtype=np.int64)
    total_change[0, :n_layers, n_layers] = -1
    total_change[0, n_layers, :n_layers] = 1
    new_total = total + total_change
    variance = (n_layers * (squares + square_change) - new_total**2) / float(n_layers**2)
    return importance[:, None, None] + gain, variance


def apply_move(problem: Problem, masks: np.ndarray, start: int, end: int, hop: np.ndarray) -> np.ndarray:
    """A copy of one assignment with one unit of coverage moved along the longest path ``start -> end``.

    ``hop`` is that assignment's ``(K, K)`` next-node table from :func:`transfer_moves`.
    """
    path = [start]
    while path[-1] != end:
        path.append(int(hop[path[-1], end]))
        if len(path) > hop.shape[0] + 1:
            raise RuntimeError("transfer path does not reach its end; polish the assignment first.")
    moved = np.array(masks, dtype=bool, copy=True)
    arcs = np.array([(0, a, c) for a, c in zip(path[:-1], path[1:])], dtype=np.int64)
    _apply_arcs(moved[None], arcs, arc_clients(problem, moved[None], *arcs.T))
    return moved


def _apply_arcs(masks: np.ndarray, arcs: np.ndarray, clients: np.ndarray) -> None:
    """Apply transfer arcs ``(member, a, c)`` with their clients to ``masks`` in place (node ``L``: pool).

    The clients must have been chosen (:func:`arc_clients`) on the assignments as they were before
    any of the arcs, as the arc weights were; the arcs of one assignment must share no node.
    """
    n_layers = masks.shape[2]
    for (member, a, c), client in zip(arcs.tolist(), clients.tolist()):
        mask = masks[member]
        if client < 0 or (a < n_layers and not mask[client, a]) or (c < n_layers and mask[client, c]):
            raise RuntimeError(f"transfer arc {a}->{c} is not valid for client {client}; this is a bug.")
        if a < n_layers:
            mask[client, a] = False
        if c < n_layers:
            mask[client, c] = True


def _positive_cycles(gain: np.ndarray) -> list[list[np.ndarray]]:
    """Node-disjoint positive cycles of each graph (nodes in arc order, first repeated at the end).

    Bellman-Ford from a virtual source joined to every node with weight 0, all graphs at once. After
    every round the predecessor graph is checked for a cycle by pointer jumping: any such cycle has
    positive weight, and one appears once a positive cycle exists (within ``K`` rounds of the last
    change otherwise); the predecessor graph's cycles are node-disjoint, so all of them can be
    cancelled at once (their arcs change distinct entries). Graphs whose distances stop changing have
    none (empty list).
    """
    count, nodes, _ = gain.shape
    dist = np.zeros((count, nodes))
    pred = np.broadcast_to(np.arange(nodes), (count, nodes)).copy()
    result: list[list[np.ndarray]] = [[] for _ in range(count)]
    live = np.arange(count)
    jumps = int(np.ceil(np.log2(nodes + 1))) + 1
    rounds = 0
    while live.size:
        rounds += 1
        through = dist[live][:, :, None] + gain[live]
        source = through.argmax(axis=1)
        best = through.max(axis=1)
        improve = best > dist[live] + _TOL
        changed = improve.any(axis=1)
        dist[live] = np.where(improve, best, dist[live])
        pred[live] = np.where(improve, source, pred[live])
        live = live[changed]
        if not live.size:
            break
        end = pred[live]
        rows = np.arange(live.size)[:, None]
        for _ in range(jumps):
            end = end[rows, end]
        on_cycle = pred[live][rows, end] != end
        cyclic = on_cycle.any(axis=1)
        for k in np.flatnonzero(cyclic):
            member = live[k]
            cycles, seen = [], set()
            for node in np.unique(end[k, on_cycle[k]]).tolist():
                if node in seen:
                    continue
                cycle = [node]
                step = int(pred[member, node])
                while step != node:
                    cycle.append(step)
                    step = int(pred[member, step])
                seen.update(cycle)
                cycle.append(node)
                cycles.append(np.array(cycle[::-1]))
            result[member] = cycles
        live = live[~cyclic]
        if rounds > 4 * nodes + 8:
            raise RuntimeError("Bellman-Ford did not settle; this is a bug.")
    return result
