"""What the server decides per client around the selector: its budget, whether its scores can be
used, and what it trains when they cannot.

Pure functions on arrays, so the round logic of the server strategy can be tested without Flower:
:func:`parse_budget` reads ``selection.budget`` from the run config and :func:`client_budgets`
expands it, the one rule every user of a budget goes through (the config's checks, the strategy's
rounds, the reply checks),
:func:`check_scores` says why a client's score vector cannot enter the optimisation, and
:func:`fallback_assignment` gives such a client its layers all the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from f3ocus_core.errors import ConfigError
from f3ocus_core.per_client import split_values, values_for, values_of
from f3ocus_core.selection.problem import top_b_masks

#: The run-config key every budget error names.
BUDGET_KEY = "selection.budget"


def parse_budget(value: object) -> tuple[int, ...]:
    """``4``, ``"4"`` or ``"4,2,3"`` -> a tuple of budgets, each at least 1.

    Raises :class:`ConfigError` naming ``selection.budget`` for a value that is not a number or a
    comma-separated list of numbers, or a budget below 1.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{BUDGET_KEY}: expected a number or a comma-separated list of numbers.")
    if isinstance(value, int):
        budgets: tuple[int, ...] = (value,)
    else:
        try:
            budgets = tuple(int(part) for part in split_values(value, BUDGET_KEY))
        except ValueError:
            raise ConfigError(
                f"{BUDGET_KEY}: {value!r} is not a number or a comma-separated list of numbers."
            ) from None
    if any(b < 1 for b in budgets):
        raise ConfigError(f"{BUDGET_KEY}: every budget must be >= 1, got {list(budgets)}.")
    return budgets


def client_budgets(
    budget_setting: Sequence[int],
    partition_ids: Sequence[int],
    num_partitions: int | None = None,
    num_layers: int | None = None,
) -> list[int]:
    """The layer budget of each client, in the order of ``partition_ids``: the rule of ``selection.budget``.

    ``budget_setting`` is the parsed ``selection.budget`` (:func:`parse_budget`): one number for every
    client, or one per client indexed by partition id (``"4,2,2,4"``: partition 1 trains 2 layers).
    ``num_partitions``, when known, is the number of clients: a list must then have exactly one
    entry per client. ``num_layers``, when known, bounds every budget.

    Raises :class:`ConfigError` (a ``ValueError``) naming ``selection.budget`` when the setting is
    empty, a budget is below 1 or above ``num_layers``, a list's length is not ``num_partitions``, or
    a list has no entry for one of ``partition_ids``.
    """
    budgets = [int(b) for b in budget_setting]
    if not budgets:
        raise ConfigError(f"{BUDGET_KEY}: empty; give one number, or one per client.")
    if any(b < 1 for b in budgets):
        raise ConfigError(f"{BUDGET_KEY}: every budget must be >= 1, got {budgets}.")
    too_big = [b for b in budgets if num_layers is not None and b > num_layers]
    if too_big:
        raise ConfigError(
            f"{BUDGET_KEY}: {too_big} exceed the model's {num_layers} layers; budgets must be 1..{num_layers}."
        )
    if num_partitions is not None:
        values_for(budgets, num_partitions, BUDGET_KEY, "budgets", "number")
    return values_of(budgets, partition_ids, BUDGET_KEY, "budgets", "number")


def check_scores(scores: np.ndarray | Sequence[float], num_layers: int, budget: int) -> np.ndarray:
    """One client's layer scores as a ``float64`` vector, or ``ValueError`` saying why they are unusable.

    Usable scores are a vector of ``num_layers`` finite, non-negative numbers, not all zero (a scorer
    that returns only zeros has failed: every assignment would be equally good), and the client's
    ``budget`` lies in ``1..num_layers``.
    """
    array = np.asarray(scores)
    if array.ndim != 1:
        raise ValueError(f"expected a vector of {num_layers} scores, got an array of shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"scores must be real numbers, got dtype {array.dtype}")
    if array.shape[0] != num_layers:
        raise ValueError(f"expected {num_layers} scores (one per layer), got {array.shape[0]}")
    array = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"scores of layers {bad.tolist()} are NaN or inf")
    negative = np.flatnonzero(array < 0)
    if negative.size:
        raise ValueError(f"scores of layers {negative.tolist()} are negative")
    if not array.any():
        raise ValueError("all scores are zero")
    if not 1 <= int(budget) <= num_layers:
        raise ValueError(f"budget {budget} is outside 1..{num_layers}; see selection.budget")
    return array


def fallback_assignment(
    last_valid_scores: np.ndarray | None, budget: int, num_layers: int, rng: np.random.Generator
) -> list[int]:
    """Layers for a client whose scores this round are unusable, sorted.

    Its own top-``budget`` layers of the last valid scores it sent (ties to the lower layer), or, if
    it never sent any, ``budget`` distinct layers drawn from ``rng`` (seed it from the run seed and
    the round, so a rerun repeats the choice).
    """
    if last_valid_scores is not None:
        scores = np.asarray(last_valid_scores, dtype=float).reshape(1, -1)
        if scores.shape[1] != num_layers:
            raise ValueError(f"last valid scores have {scores.shape[1]} entries, expected {num_layers}")
        return np.flatnonzero(top_b_masks(scores, [budget])[0]).tolist()
    if not 1 <= budget <= num_layers:
        raise ValueError(f"budget {budget} is outside 1..{num_layers}; see selection.budget")
    return sorted(rng.choice(num_layers, size=budget, replace=False).tolist())
