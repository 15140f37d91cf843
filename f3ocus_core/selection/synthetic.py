"""Score matrices shaped like normalised LNTK scores: the public generator of selection instances.

Public API (:func:`lntk_like_scores`), kept in the library on purpose: it makes the instances of
``benchmarks/bench_selection.py`` and ``benchmarks/bench_score_privacy.py``, whose figures
docs/selection.md and docs/privacy.md publish, so a new selector can be measured on the same
instances by seed without running a model; the tests use it for the same reason. No run of the apps
calls it.

Layer-wise NTK principal eigenvalues are heavy-tailed and span orders of magnitude
(Saha et al., "F3OCUS", CVPR 2025, arXiv 2411.11912): a few
layers dominate, several of them for every client (in the paper's LLaVA example layers 0 and 1 are in
every client's top-4), others only for some. The generator draws log-eigenvalues as

    log lambda[i, l] = shared[l] + client[i, l] + heavy[i, l],

with ``shared ~ N(0, shared_scale**2)`` common to all clients, ``client ~ N(0, client_scale**2)``
client-specific, and ``heavy ~ 0.5 * t_3`` a heavy-tailed jolt, then normalises each row to sum to 1
(``S_i^l = lambda_1^l / sum_k lambda_1^k``).
"""

from __future__ import annotations

import numpy as np


def lntk_like_scores(
    n_clients: int,
    n_layers: int,
    seed: int | np.random.Generator = 0,
    shared_scale: float = 1.5,
    client_scale: float = 1.0,
) -> np.ndarray:
    """An ``(n_clients, n_layers)`` matrix of positive, row-normalised, heavy-tailed scores."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.0, shared_scale, size=n_layers)
    client = rng.normal(0.0, client_scale, size=(n_clients, n_layers))
    heavy = 0.5 * rng.standard_t(3, size=(n_clients, n_layers))
    log_eig = shared[None, :] + client + heavy
    eig = np.exp(log_eig - log_eig.max(axis=1, keepdims=True))
    return eig / eig.sum(axis=1, keepdims=True)


#: The budget cases of the selection benchmarks: ``"4"`` (every client 4 layers) and ``"mixed"``.
BUDGET_CASES: tuple[str, ...] = ("4", "mixed")


def case_budgets(case: str, n_clients: int) -> np.ndarray:
    """The budgets of a benchmark case: ``"4"``, every client 4 layers; ``"mixed"``, 2, 3, 4, 5, 6, 2, ...
    (``b_i = 2 + i mod 5``, mean 4)."""
    if case not in BUDGET_CASES:
        raise ValueError(f"unknown budget case {case!r}; choose one of {list(BUDGET_CASES)}.")
    return np.full(n_clients, 4) if case == "4" else 2 + np.arange(n_clients) % 5
