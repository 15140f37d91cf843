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

See ``docs/selection.md`` for the problem, the selectors and how to choose one.
"""

from f3ocus_core.selection.api import ALGORITHMS, select
from f3ocus_core.selection.client_rules import check_scores, client_budgets, fallback_assignment
from f3ocus_core.selection.front import PICK_RULES, hypervolume, nondominated, pick_point
from f3ocus_core.selection.problem import Problem, coverage_variance, top_b_masks, validate_problem
from f3ocus_core.selection.result import SelectionResult

__all__ = [
    "ALGORITHMS",
    "PICK_RULES",
    "Problem",
    "SelectionResult",
    "coverage_variance",
    "hypervolume",
    "nondominated",
    "pick_point",
    "select",
    "top_b_masks",
    "validate_problem",
]
