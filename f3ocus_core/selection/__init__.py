"""Server-side layer selection of F3OCUS: which clients train which layers this round.

The server knows each client's layer scores ``S`` (N x L) and budget ``b_i`` and chooses a boolean
assignment that maximises the total importance and minimises the variance of the per-layer coverage
counts (see :mod:`f3ocus_core.selection.problem`). :func:`select` runs one of :data:`ALGORITHMS` and
returns a :class:`SelectionResult` with the chosen assignment and the whole non-dominated set found.

    from f3ocus_core.selection import select
    result = select(scores, budgets=4, algorithm="nsga2", seed=0, pick="knee")
    result.masks        # (N, L) bool
    result.front        # (F, 2): (importance, variance) per non-dominated point
    result.chosen       # index into result.front

Around the selector, the server strategy uses :func:`client_budgets`, :func:`check_scores` and
:func:`fallback_assignment` (per-client budgets, usable scores, layers for a client without them);
:func:`parse_budget` and :func:`client_budgets` are the one reading of ``selection.budget``.

See ``docs/selection.md`` for the problem, the selectors and how to choose one.
"""

from f3ocus_core.selection.api import ALGORITHMS, select
from f3ocus_core.selection.clients import check_scores, client_budgets, fallback_assignment, parse_budget
from f3ocus_core.selection.front import (
    PICK_RULES,
    fair_reference,
    hypervolume,
    nondominated,
    pareto_optimal,
    pick_point,
)
from f3ocus_core.selection.problem import Problem, coverage_variance, top_b_masks, validate_problem
from f3ocus_core.selection.result import SelectionResult

__all__ = [
    "ALGORITHMS",
    "PICK_RULES",
    "Problem",
    "SelectionResult",
    "check_scores",
    "client_budgets",
    "coverage_variance",
    "fair_reference",
    "fallback_assignment",
    "hypervolume",
    "nondominated",
    "pareto_optimal",
    "parse_budget",
    "pick_point",
    "select",
    "top_b_masks",
    "validate_problem",
]
