"""The exact Pareto front: an epsilon-constraint sweep over the coverage variance, solved with HiGHS.

With a fixed total ``T = sum_l n_l`` (``T = sum_i b_i`` when budgets are used exactly) the variance is
``V = (sum_l n_l**2) / L - (T / L)**2``, so minimising ``V`` means minimising ``Q = sum_l n_l**2``, an
integer with the parity of ``T``. The sweep starts at the clients' top-b (the largest importance) and
repeatedly solves

    max  sum_il S_il x_il
    s.t. sum_l x_il = b_i            (or 1 <= . <= b_i, with sum_il x_il = T)
         sum_i x_il = n_l,  n_l integer in 0..N
         sum_l n_l**2 <= q,  q = Q_previous - 2,

until no smaller ``Q`` is feasible; each solution is a front point. ``n_l**2`` is modelled exactly by
its convex piecewise-linear expansion ``n_l = sum_k y_lk``, ``n_l**2 = sum_k (2k - 1) y_lk`` with
``0 <= y_lk <= 1``; the ``x`` may stay continuous because for integer ``n`` the remaining
transportation polytope has integer vertices. Only the ``L`` counts are integer variables.

Three things make each step fast:

1. an incumbent from the exchange graph of the previous optimum: moving one unit of coverage from
   layer ``a`` to layer ``c`` gains at best the longest path ``a -> c`` in the graph with arcs
   ``w[a, c] = max_i {S_ic - S_ia : client i trains a, not c}`` (the augmenting path of the
   transportation problem), found for all pairs by Floyd-Warshall;
2. the LP relaxation: if it does not beat the incumbent, the incumbent is optimal;
3. otherwise reduced-cost fixing (a variable whose LP reduced cost exceeds ``LP - incumbent`` cannot
   move in a better solution) before ``scipy.optimize.milp`` proves the optimum.

With ``exact_budget=False`` the sweep is repeated for every total ``T`` from ``N`` to ``sum_i b_i`` and
the union is filtered; that is ``sum_i b_i - N + 1`` sweeps, meant for small problems and tests.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from f3ocus_core.selection.params import positive
from f3ocus_core.selection.problem import Problem

if TYPE_CHECKING:
    from scipy.optimize import OptimizeResult

_TOL = 1e-9


@dataclass(frozen=True)
class ExactParams:
    """Hyperparameters of :func:`run`.

    time_limit : float
        Seconds after which the sweep stops and returns the points found so far (0: no limit). The
        result's ``info["complete"]`` says whether the front is complete; a stopped sweep is not
        deterministic.
    """

    time_limit: float = 0.0

    def check(self) -> None:
        positive("time_limit", self.time_limit, "exact", allow_zero=True)


def run(problem: Problem, rng: np.random.Generator, params: ExactParams) -> tuple[np.ndarray, dict]:
    """All points of the exact front as ``(F, N, L)`` masks, plus facts about the sweep."""
    del rng
    deadline = time.monotonic() + params.time_limit if params.time_limit > 0 else None
    budgets = problem.budgets
    totals = [int(budgets.sum())] if problem.exact_budget else list(range(problem.n_clients, int(budgets.sum()) + 1))
    found, stats = [], {"lp_solves": 0, "milp_solves": 0, "complete": True}
    for total in reversed(totals):
        sweep = _Sweep(problem, total)
        found.extend(sweep.run(deadline, stats))
        if not stats["complete"]:
            break
    return np.stack(found), stats


class _Sweep:
    """The epsilon-constraint sweep for one total ``T`` of assigned layers."""

    def __init__(self, problem: Problem, total: int) -> None:
        self.problem = problem
        self.total = total
        self.n, self.l = problem.n_clients, problem.n_layers
        self._build()

    def run(self, deadline: float | None, stats: dict) -> list[np.ndarray]:
        masks = _max_importance(self.problem, self.total)
        points = [masks]
        q_min = _balanced_q(self.total, self.l)
        q = _q(masks)
        while q > q_min:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                stats["complete"] = False
                break
            try:
                masks = self._solve(q - 2, masks, stats, left)
            except _OutOfTime:
                stats["complete"] = False
                break
            if masks is None:
                break
            points.append(masks)
            q = _q(masks)
        return points

    def _build(self) -> None:
        n, l, nx = self.n, self.l, self.n * self.l
        ny = l * n
        self.nx, self.nv = nx, nx + l + ny
        rows = sparse.kron(sparse.eye(n), np.ones((1, l)))
        cols = sparse.kron(np.ones((1, n)), sparse.eye(l))
        ys = sparse.kron(sparse.eye(l), np.ones((1, n)))
        zeros = sparse.csr_matrix
        client = sparse.hstack([rows, zeros((n, l + ny))])
        link_x = sparse.hstack([cols, -sparse.eye(l), zeros((l, ny))])
        link_y = sparse.hstack([zeros((l, nx)), -sparse.eye(l), ys])
        total = sparse.hstack([zeros((1, nx)), np.ones((1, l)), zeros((1, ny))])
        weights = np.tile(2.0 * np.arange(1, n + 1) - 1.0, l)
        self.q_row = sparse.hstack([zeros((1, nx + l)), weights[None, :]]).tocsr()
        budgets = self.problem.budgets.astype(float)
        if self.problem.exact_budget:
            self.a_eq = sparse.vstack([client, link_x, link_y]).tocsr()
            self.b_eq = np.concatenate([budgets, np.zeros(2 * l)])
            self.a_ub_fixed, self.b_ub_fixed = sparse.csr_matrix((0, self.nv)), np.zeros(0)
        else:
            self.a_eq = sparse.vstack([link_x, link_y, total]).tocsr()
            self.b_eq = np.concatenate([np.zeros(2 * l), [float(self.total)]])
            self.a_ub_fixed = sparse.vstack([client, -client]).tocsr()
            self.b_ub_fixed = np.concatenate([budgets, -np.ones(n)])
        self.cost = np.concatenate([-self.problem.scores.ravel(), np.zeros(l + ny)])
        self.lower = np.zeros(self.nv)
        self.upper = np.concatenate([np.ones(nx), np.full(l, float(n)), np.ones(ny)])
        self.integrality = np.concatenate([np.zeros(nx), np.ones(l), np.zeros(ny)])

    def _solve(self, q: int, previous: np.ndarray, stats: dict, seconds: float | None) -> np.ndarray | None:
        """The maximum-importance assignment with ``sum n**2 <= q`` (None if there is none).

        Raises ``_OutOfTime`` when the MILP stops at the ``seconds`` limit without a proof.
        """
        scores = self.problem.scores
        incumbent = _improve(scores, previous, q)
        best = float(scores[incumbent].sum()) if incumbent is not None else -np.inf
        a_ub = sparse.vstack([self.a_ub_fixed, self.q_row]).tocsr()
        b_ub = np.concatenate([self.b_ub_fixed, [float(q)]])
        lp = linprog(
            self.cost,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=self.a_eq,
            b_eq=self.b_eq,
            bounds=np.column_stack([self.lower, self.upper]),
            method="highs",
        )
        stats["lp_solves"] += 1
        if lp.status == 2:
            return None
        if lp.status != 0:
            raise RuntimeError(f"exact selector: LP relaxation failed ({lp.message}).")
        bound = -lp.fun
        gap = bound - best
        if gap <= _TOL * max(1.0, abs(best)):
            return incumbent
        lower, upper = self.lower.copy(), self.upper.copy()
        if np.isfinite(best):
            _fix_by_reduced_cost(lp, gap, lower, upper)
        constraints = [LinearConstraint(self.a_eq, self.b_eq, self.b_eq), LinearConstraint(self.q_row, -np.inf, q)]
        if self.a_ub_fixed.shape[0]:
            constraints.append(LinearConstraint(self.a_ub_fixed, -np.inf, self.b_ub_fixed))
        options = {"mip_rel_gap": 1e-9}
        if seconds is not None:
            options["time_limit"] = max(seconds, 1e-3)
        res = milp(
            self.cost,
            integrality=self.integrality,
            bounds=Bounds(lower, upper),
            constraints=constraints,
            options=options,
        )
        stats["milp_solves"] += 1
        if res.status == 1:
            raise _OutOfTime
        if res.x is None or -res.fun <= best + _TOL * max(1.0, abs(best)):
            return incumbent
        return self._integral(res.x)

    def _integral(self, solution: np.ndarray) -> np.ndarray:
        """The 0/1 assignment of a MILP solution; re-solved as a transportation LP if x is fractional."""
        x = solution[: self.nx].reshape(self.n, self.l)
        counts = np.round(solution[self.nx : self.nx + self.l]).astype(int)
        masks = x > 0.5
        if np.abs(x - masks).max() < 1e-6 and (masks.sum(0) == counts).all():
            return masks
        lower, upper = self.lower.copy(), self.upper.copy()
        lower[self.nx : self.nx + self.l] = upper[self.nx : self.nx + self.l] = counts
        a_ub = sparse.vstack([self.a_ub_fixed, self.q_row]).tocsr()
        b_ub = np.concatenate([self.b_ub_fixed, [np.inf]])
        lp = linprog(
            self.cost,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=self.a_eq,
            b_eq=self.b_eq,
            bounds=np.column_stack([lower, upper]),
            method="highs-ds",
        )
        return lp.x[: self.nx].reshape(self.n, self.l) > 0.5


class _OutOfTime(Exception):
    """The time limit stopped a MILP before it proved its answer optimal."""


def _fix_by_reduced_cost(lp: OptimizeResult, gap: float, lower: np.ndarray, upper: np.ndarray) -> None:
    """Tighten bounds of variables whose reduced cost shows they cannot move in a better solution.

    For the minimisation LP with optimum ``z``, every feasible point satisfies
    ``c x >= z + sum_j d_j (x_j - l_j) + sum_j e_j (u_j - x_j)`` with ``d, e >= 0`` the reduced costs
    at lower and upper bounds; a solution better than the incumbent (``c x <= z + gap``) therefore
    has ``x_j - l_j <= gap / d_j`` and ``u_j - x_j <= gap / e_j``. Integer bounds are floored.
    """
    at_lower = np.maximum(lp.lower.marginals, 0.0)
    at_upper = np.maximum(-lp.upper.marginals, 0.0)
    slack = gap + 1e-7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        move_up = np.where(at_lower > slack, np.floor(slack / at_lower), np.inf)
        move_down = np.where(at_upper > slack, np.floor(slack / at_upper), np.inf)
    upper[:] = np.minimum(upper, lower + move_up)
    lower[:] = np.maximum(lower, upper - move_down)


def _q(masks: np.ndarray) -> int:
    return int((masks.sum(axis=0).astype(np.int64) ** 2).sum())


def _balanced_q(total: int, n_layers: int) -> int:
    """Smallest ``sum n_l**2`` with ``sum n_l = total``: counts as equal as possible."""
    base, extra = divmod(total, n_layers)
    return extra * (base + 1) ** 2 + (n_layers - extra) * base**2


def _max_importance(problem: Problem, total: int) -> np.ndarray:
    """The maximum-importance assignment using ``total`` layers in all.

    With exact budgets this is the clients' top-b. Otherwise every client takes its best layer and the
    remaining ``total - N`` picks are the best remaining (client, layer) pairs within the budgets, which
    is optimal by the greedy property of this partition matroid. Ties go to lower client and layer.
    """
    if problem.exact_budget:
        return problem.top_b()
    scores = problem.scores
    n, l = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(l)[None, :], axis=1)
    masks = ranks < 1
    eligible = (ranks >= 1) & (ranks < problem.budgets[:, None])
    flat = np.where(eligible, scores, -np.inf).ravel()
    picks = np.argsort(-flat, kind="stable")[: total - n]
    masks.ravel()[picks] = True
    return masks


def _improve(scores: np.ndarray, masks: np.ndarray, q: int, rounds: int = 50) -> np.ndarray | None:
    """A good assignment with ``sum n**2 <= q`` reached from ``masks`` by coverage transfers.

    First the best transfer that reaches ``Q <= q``, then improving transfers that stay within it
    (each transfer is one augmenting path of the exchange graph). Client row sums never change.
    Returns None when no sequence of transfers reaches ``q``.
    """
    n_layers = scores.shape[1]
    for _ in range(rounds):
        counts = masks.sum(axis=0).astype(np.int64)
        q_now = int((counts**2).sum())
        gains, hop, who = _transfer_gains(scores, masks)
        q_after = q_now + 2 * (counts[None, :] - counts[:, None] + 1)
        allowed = q_after <= q
        if q_now <= q:
            allowed &= gains > 1e-12
        gains = np.where(allowed, gains, -np.inf)
        a, c = divmod(int(np.argmax(gains)), n_layers)
        if not np.isfinite(gains[a, c]):
            return masks if q_now <= q else None
        moved = _apply_path(masks, a, c, hop, who)
        if moved is None:
            return masks if q_now <= q else None
        masks = moved
    return masks if _q(masks) <= q else None


def _transfer_gains(scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-pairs longest paths of the exchange graph, with next hops and the client of each arc."""
    n_layers = scores.shape[1]
    delta = scores[:, None, :] - scores[:, :, None]
    delta = np.where(masks[:, :, None] & ~masks[:, None, :], delta, -np.inf)
    who = delta.argmax(axis=0)
    gains = delta.max(axis=0)
    np.fill_diagonal(gains, -np.inf)
    hop = np.tile(np.arange(n_layers), (n_layers, 1))
    for k in range(n_layers):
        through = gains[:, k : k + 1] + gains[k : k + 1, :]
        better = through > gains + 1e-15
        gains = np.where(better, through, gains)
        hop = np.where(better, hop[:, k : k + 1], hop)
    return gains, hop, who


def _apply_path(masks: np.ndarray, start: int, end: int, hop: np.ndarray, who: np.ndarray) -> np.ndarray | None:
    """Apply the transfer ``start -> end`` along its path; None if the path is not a valid exchange."""
    moved = masks.copy()
    visited = {start}
    node = start
    while node != end:
        nxt = int(hop[node, end])
        client = int(who[node, nxt])
        if nxt in visited or not moved[client, node] or moved[client, nxt]:
            return None
        moved[client, node] = False
        moved[client, nxt] = True
        visited.add(nxt)
        node = nxt
    return moved
