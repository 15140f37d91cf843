"""The server's layer-assignment problem: inputs, feasibility and the two objectives.

For ``N`` clients and ``L`` layers the server chooses a boolean matrix ``m`` (``m[i, l]``: client
``i`` trains layer ``l``) that

* maximises the total importance ``I(m) = sum_i sum_l m[i, l] * S[i, l]``, and
* minimises the coverage variance ``V(m) = (1/L) sum_l (n_l - mean(n))**2`` with ``n_l = sum_i m[i, l]``,

subject to the client budgets: ``sum_l m[i, l] == b_i`` (``exact_budget=True``, the paper's setting) or
``1 <= sum_l m[i, l] <= b_i`` (``exact_budget=False``).

``V`` is computed from integers, ``V = (L * sum_l n_l**2 - (sum_l n_l)**2) / L**2``, so equal coverage
profiles give bit-identical variances. All functions take a single assignment ``(N, L)`` or a whole
population ``(P, N, L)`` and are vectorised over the population.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def validate_problem(scores: np.ndarray, budgets: int | Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check a score matrix and budgets; return them as ``float64`` scores and ``int64`` budgets.

    Parameters
    ----------
    scores : np.ndarray
        ``(N, L)`` non-negative finite layer scores, one row per client (normalised LNTK scores in
        F3OCUS, but any non-negative values are accepted).
    budgets : int or sequence of int
        One budget for every client, or ``N`` budgets; each must lie in ``1..L``.

    Raises
    ------
    ValueError
        With a message that says what is wrong and what is expected.
    """
    array = np.asarray(scores)
    if array.ndim != 2:
        raise ValueError(f"scores must be a 2-D array (clients x layers); got {array.ndim} dimension(s).")
    n_clients, n_layers = array.shape
    if n_clients == 0 or n_layers == 0:
        raise ValueError(f"scores must have at least one client and one layer; got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise ValueError(f"scores must be real numbers; got dtype {array.dtype}.")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        rows = sorted(set(np.nonzero(bad)[0].tolist()))
        raise ValueError(
            f"scores contain NaN or inf (client rows {rows}); send finite scores or leave those clients out."
        )
    if (array < 0).any():
        rows = sorted(set(np.nonzero(array < 0)[0].tolist()))
        raise ValueError(f"scores must be non-negative; negative values in client rows {rows}.")

    raw = np.asarray(budgets)
    if raw.ndim == 0:
        raw = np.full(n_clients, raw)
    if raw.ndim != 1 or raw.shape[0] != n_clients:
        raise ValueError(
            f"budgets must be one integer or a list of {n_clients} integers (one per client); got shape {raw.shape}."
        )
    if raw.dtype == bool or not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"budgets must be integers; got dtype {raw.dtype}.")
    if np.issubdtype(raw.dtype, np.floating) and not np.all(np.isfinite(raw) & (raw == np.round(raw))):
        raise ValueError(f"budgets must be whole numbers; got {raw.tolist()}.")
    budget_array = raw.astype(np.int64)
    outside = (budget_array < 1) | (budget_array > n_layers)
    if outside.any():
        raise ValueError(
            f"every budget must lie in 1..{n_layers} (the number of layers); got "
            f"{budget_array[outside].tolist()} for client rows {np.flatnonzero(outside).tolist()}."
        )
    return array, budget_array


def top_b_masks(scores: np.ndarray, budgets: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Each client's own ``b_i`` highest-scoring layers, ties broken by the lower layer index.

    This is "LNTK alone" in the paper: no server step. Returns an ``(N, L)`` bool matrix.
    """
    scores, budgets = validate_problem(scores, budgets)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks < budgets[:, None]


def coverage_variance(counts: np.ndarray) -> np.ndarray:
    """Population variance over layers of integer coverage counts ``(..., L)``, computed exactly."""
    counts = np.asarray(counts, dtype=np.int64)
    n_layers = counts.shape[-1]
    return (n_layers * (counts**2).sum(-1) - counts.sum(-1) ** 2) / float(n_layers**2)


@dataclass(frozen=True)
class Problem:
    """A validated selection problem.

    Parameters
    ----------
    scores : np.ndarray
        ``(N, L)`` float scores.
    budgets : np.ndarray
        ``(N,)`` int budgets in ``1..L``.
    exact_budget : bool
        Every client uses exactly ``b_i`` layers (True) or between 1 and ``b_i`` (False).
    """

    scores: np.ndarray
    budgets: np.ndarray
    exact_budget: bool = True

    @classmethod
    def create(cls, scores: np.ndarray, budgets: int | Sequence[int], exact_budget: bool = True) -> Problem:
        """Validate the inputs (see :func:`validate_problem`) and build the problem."""
        clean_scores, clean_budgets = validate_problem(scores, budgets)
        clean_scores.setflags(write=False)
        clean_budgets.setflags(write=False)
        return cls(clean_scores, clean_budgets, bool(exact_budget))

    @property
    def n_clients(self) -> int:
        return self.scores.shape[0]

    @property
    def n_layers(self) -> int:
        return self.scores.shape[1]

    @property
    def min_counts(self) -> np.ndarray:
        """Fewest layers each client may train: ``b_i`` with exact budgets, else 1."""
        return self.budgets if self.exact_budget else np.ones_like(self.budgets)

    def evaluate(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objectives ``(importance, variance)`` of one ``(N, L)`` assignment or a ``(P, N, L)`` population."""
        masks = np.asarray(masks, dtype=bool)
        importance = (masks * self.scores).sum(axis=(-2, -1))
        return importance, coverage_variance(masks.sum(axis=-2))

    def is_feasible(self, masks: np.ndarray) -> np.ndarray:
        """Whether each assignment keeps every budget (bool, one per assignment)."""
        masks = np.asarray(masks, dtype=bool)
        counts = masks.sum(axis=-1)
        return ((counts >= self.min_counts) & (counts <= self.budgets)).all(axis=-1)

    def top_b(self) -> np.ndarray:
        """The clients' own top-``b_i`` layers: the maximum-importance assignment."""
        return top_b_masks(self.scores, self.budgets)

    def random_masks(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` uniformly random feasible assignments (counts uniform in the allowed range)."""
        keys = rng.random((size, self.n_clients, self.n_layers))
        if self.exact_budget:
            counts = np.broadcast_to(self.budgets, (size, self.n_clients))
        else:
            counts = rng.integers(1, self.budgets + 1, size=(size, self.n_clients))
        return _rank(keys) < counts[..., None]

    def repair(self, masks: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
        """Make assignments keep the budgets by dropping or adding as few layers as possible.

        A row with too many layers keeps those with the highest ``key``; a row with too few adds the
        unselected layers with the highest ``key``. The default key prefers high score and low
        coverage: ``S[i, l] / max_l S[i, l] - n_l / N``. Returns a new ``(P, N, L)`` bool array.
        """
        masks = np.array(masks, dtype=bool, ndmin=3)
        if key is None:
            coverage = masks.sum(axis=1, keepdims=True) / self.n_clients
            top = self.scores.max(axis=1, keepdims=True)
            key = np.where(top > 0, self.scores / np.where(top > 0, top, 1.0), 0.0) - coverage
        key = np.broadcast_to(key, masks.shape)
        counts = masks.sum(axis=-1)
        keep = _rank(np.where(masks, key, -np.inf)) < self.budgets[None, :, None]
        masks = masks & keep
        missing = np.maximum(self.min_counts[None, :] - np.minimum(counts, self.budgets[None, :]), 0)
        if missing.any():
            add = _rank(np.where(masks, -np.inf, key)) < missing[..., None]
            masks = masks | add
        return masks


def _rank(keys: np.ndarray) -> np.ndarray:
    """Rank of each entry along the last axis in descending key order (0 = largest; stable)."""
    order = np.argsort(-keys, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(keys.shape[-1]), axis=-1)
    return ranks
