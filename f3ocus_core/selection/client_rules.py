"""Per-client rules around the server's selection: budgets, score checks and the fall-back.

The selector (:func:`f3ocus_core.selection.select`) sees only clients whose scores are usable. These
three pure functions decide, for one client at a time, what its budget is, whether its scores are
usable, and which layers it trains when they are not.
"""

from __future__ import annotations

import numpy as np

from f3ocus_core.selection.problem import top_b_masks


def client_budgets(budget_setting: tuple[int, ...], partition_ids: list[int]) -> list[int]:
    """Each client's layer budget: the single value repeated, or the list indexed by partition id.

    Raises
    ------
    ValueError
        If a partition id has no entry in a per-client budget list (names ``selection.budget``).
    """
    if len(budget_setting) == 1:
        return [int(budget_setting[0])] * len(partition_ids)
    missing = [pid for pid in partition_ids if not 0 <= pid < len(budget_setting)]
    if missing:
        raise ValueError(
            f"selection.budget: {len(budget_setting)} budgets given, but partition ids {missing} have no entry; "
            "give one number, or one per partition (in partition-id order)."
        )
    return [int(budget_setting[pid]) for pid in partition_ids]


def check_scores(scores: np.ndarray, num_layers: int, budget: int) -> None:
    """Check that one client's layer scores can enter the selection with its budget.

    Raises
    ------
    ValueError
        Saying what is wrong: not a vector of ``num_layers`` finite non-negative numbers, all zero,
        or a budget outside ``1..num_layers``.
    """
    array = np.asarray(scores, dtype=float)
    if array.shape != (num_layers,):
        raise ValueError(f"expected {num_layers} scores, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"scores contain NaN or inf at layers {np.flatnonzero(~np.isfinite(array)).tolist()}")
    if (array < 0).any():
        raise ValueError(f"scores are negative at layers {np.flatnonzero(array < 0).tolist()}")
    if not array.any():
        raise ValueError("scores are all zero, so they rank no layer above another")
    if not 1 <= budget <= num_layers:
        raise ValueError(f"budget {budget} is outside 1..{num_layers} (the number of layers)")


def fallback_assignment(
    last_valid_scores: np.ndarray | None, budget: int, num_layers: int, rng: np.random.Generator
) -> list[int]:
    """Layers for a client whose scores this round are unusable, sorted.

    Its own top-``budget`` layers by its last valid scores if it ever sent some (ties to the lower
    index), else a random set of ``budget`` layers drawn from ``rng`` (seeded by the caller, so a run
    is repeatable).
    """
    if last_valid_scores is not None:
        return np.flatnonzero(top_b_masks(np.asarray(last_valid_scores)[None, :], [budget])[0]).tolist()
    return sorted(rng.choice(num_layers, size=budget, replace=False).tolist())
