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


def transfer_graph(problem: Problem, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc weights ``(P, K, K)`` and the client of each arc ``(P, K, K)`` of a population's transfer graphs.

    Absent arcs weigh ``-inf`` (client ``-1``). Node ``L`` is the pool; its arcs exist only with
    ``exact_budget=False``. Among clients giving an arc the same weight the highest index is used.
    """
    masks = np.asarray(masks, dtype=bool)
    count, _, n_layers = masks.shape
    scores = problem.scores
    nodes = n_layers + 1
    gain = np.full((count, nodes, nodes), -np.inf)
    who = np.full((count, nodes, nodes), -1, dtype=np.int64)
    member, client, layer = np.nonzero(masks)
    if member.size:
        values = scores[client] - scores[client, layer][:, None]
        values[masks[member, client]] = -np.inf
        key = member * n_layers + layer
        order = np.argsort(key, kind="stable")
        key, values, client = key[order], values[order], client[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        best = np.maximum.reduceat(values, starts, axis=0)
        group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, key.size]))
        hit = (values >= best[group]) & np.isfinite(values)
        best_who = np.maximum.reduceat(np.where(hit, client[:, None], -1), starts, axis=0)
        rows, cols = key[starts] // n_layers, key[starts] % n_layers
        gain[rows, cols, :n_layers] = best
        who[rows, cols, :n_layers] = best_who
    if not problem.exact_budget:
        size = masks.sum(axis=2)
        can_drop = masks & (size > 1)[..., None]
        can_add = ~masks & (size < problem.budgets)[..., None]
        drop = np.where(can_drop, -scores, -np.inf)
        add = np.where(can_add, scores, -np.inf)
        gain[:, :n_layers, n_layers] = drop.max(axis=1)
        who[:, :n_layers, n_layers] = np.where(can_drop.any(axis=1), _last_argmax(drop), -1)
        gain[:, n_layers, :n_layers] = add.max(axis=1)
        who[:, n_layers, :n_layers] = np.where(can_add.any(axis=1), _last_argmax(add), -1)
    return gain, who


def polish(problem: Problem, masks: np.ndarray, max_rounds: int = 10_000) -> np.ndarray:
    """The most important assignment with the same coverage counts, for each assignment given.

    Cancels positive cycles of the transfer graph (Bellman-Ford, all assignments together) until none
    is left; the coverage counts never change and the importance never falls. Returns a new
    ``(P, N, L)`` array (a single ``(N, L)`` assignment gives ``(1, N, L)``).
    """
    masks = np.array(masks, dtype=bool, copy=True, ndmin=3)
    active = np.arange(len(masks))
    for _ in range(max_rounds):
        if active.size == 0:
            return masks
        gain, who = transfer_graph(problem, masks[active])
        cycles = _positive_cycles(gain)
        found = [k for k, some in enumerate(cycles) if some]
        for k in found:
            for cycle in cycles[k]:
                _apply_arcs(masks[active[k]], list(zip(cycle[:-1], cycle[1:])), who[k])
        active = active[found]
    raise RuntimeError(f"cycle cancelling did not finish in {max_rounds} rounds; this is a bug.")


def transfer_moves(problem: Problem, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-pairs longest paths of the transfer graphs of polished assignments (Floyd-Warshall).

    Returns ``(gain, hop, who)``: ``gain[p, a, c]`` is the exact change of the best importance when one
    unit of coverage moves from node ``a`` to node ``c`` (``-inf`` if impossible), ``hop[p, a, c]`` the
    node after ``a`` on that path, ``who`` the arc clients (see :func:`transfer_graph`). The assignments
    must be polished (no positive cycle), else the values are meaningless.
    """
    gain, who = transfer_graph(problem, masks)
    nodes = gain.shape[1]
    hop = np.broadcast_to(np.arange(nodes), gain.shape).copy()
    for k in range(nodes):
        through = gain[:, :, k: k + 1] + gain[:, k: k + 1, :]
        better = through > gain + _TOL
        np.copyto(gain, through, where=better)
        np.copyto(hop, np.broadcast_to(hop[:, :, k: k + 1], hop.shape), where=better)
    diagonal = np.arange(nodes)
    gain[:, diagonal, diagonal] = -np.inf
    return gain, hop, who


def moved_objectives(problem: Problem, masks: np.ndarray, importance: np.ndarray,
                     gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def apply_move(masks: np.ndarray, start: int, end: int, hop: np.ndarray, who: np.ndarray) -> np.ndarray:
    """A copy of one assignment with one unit of coverage moved along the longest path ``start -> end``."""
    path = [start]
    while path[-1] != end:
        path.append(int(hop[path[-1], end]))
        if len(path) > hop.shape[0] + 1:
            raise RuntimeError("transfer path does not reach its end; polish the assignment first.")
    moved = np.array(masks, dtype=bool, copy=True)
    _apply_arcs(moved, list(zip(path[:-1], path[1:])), who)
    return moved


def _apply_arcs(mask: np.ndarray, arcs: list[tuple[int, int]], who: np.ndarray) -> None:
    """Apply transfer arcs to one ``(N, L)`` assignment in place (node ``L`` is the pool)."""
    n_layers = mask.shape[1]
    for a, c in arcs:
        client = int(who[a, c])
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


def _last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the last maximum along axis 1 of a ``(P, N, L)`` array: ``(P, L)``."""
    flipped = values[:, ::-1, :].argmax(axis=1)
    return values.shape[1] - 1 - flipped
