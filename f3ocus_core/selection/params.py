"""Hyperparameters of the selectors: defaults in one frozen dataclass per selector, checked by name.

The five metaheuristics (``nsga2``, ``mopso``, ``aco``, ``abc``, ``sa``) share the memetic machinery
of :mod:`f3ocus_core.selection.memetic`, so their parameter classes extend :class:`MetaheuristicParams`,
which holds the four settings of that machinery once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from f3ocus_core.errors import did_you_mean

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


@dataclass(frozen=True)
class MetaheuristicParams:
    """The settings every metaheuristic shares (each selector's own class adds its search settings).

    lagrangian_start : int
        Lagrangian coverage-balancing variants of the clients' top-b to start from
        (:func:`f3ocus_core.selection.moves.lagrangian_assignments`): all enter the archive, and as
        many as fit seed the search (the first population, swarm, food sources, trails or chains);
        0 starts from random assignments.
    polish : bool
        Replace every assignment evaluated by the most important one with its coverage counts, and
        mutate by exact coverage moves (see :mod:`f3ocus_core.selection.memetic`); 0 uses plain
        budget-keeping swaps.
    local_search : int
        Archive members whose coverage-move neighbourhood is explored per step of the search (a
        generation, iteration, colony, cycle, or a return to base of annealing): Pareto local search;
        0 disables.
    hull_walk : bool
        At the first local-search step, walk the front's convex hull from the clients' own top-b to
        its balanced end (:class:`f3ocus_core.selection.memetic.HullWalk`); 0 disables.
    """

    #: The selector's name in :data:`f3ocus_core.selection.ALGORITHMS`, for error messages.
    algorithm: ClassVar[str] = ""

    lagrangian_start: int = 0
    polish: bool = True
    local_search: int = 16
    hull_walk: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` naming the parameter if a shared setting cannot work."""
        positive("lagrangian_start", self.lagrangian_start, self.algorithm, allow_zero=True)
        positive("local_search", self.local_search, self.algorithm, allow_zero=True)


def resolve_params(defaults: T, algorithm: str, params: dict[str, Any]) -> T:
    """``defaults`` with ``params`` applied; unknown keys and wrong types raise ``ValueError``.

    Numbers arrive from run configs as ``int`` or ``float``: an ``int`` field accepts a whole float,
    a ``bool`` field accepts 0/1, a ``float`` field any number.
    """
    known = {f.name: f for f in fields(defaults)}
    changes = {}
    for key, value in params.items():
        if key not in known:
            raise ValueError(
                f"unknown parameter {key!r} for selector {algorithm!r}{did_you_mean(key, known)}; "
                f"known: {', '.join(sorted(known)) or 'none'}."
            )
        current = getattr(defaults, key)
        changes[key] = _coerce(algorithm, key, value, current)
    result = replace(defaults, **changes)
    check = getattr(result, "check", None)
    if check is not None:
        check()
    return result


def _coerce(algorithm: str, key: str, value: Any, current: Any) -> Any:
    where = f"parameter {key!r} of selector {algorithm!r}"
    if isinstance(current, tuple):
        items = value if isinstance(value, tuple | list) else (value,)
        if any(isinstance(v, bool) or not isinstance(v, int | float) or float(v) != int(v) for v in items):
            raise ValueError(f"{where} must be whole numbers joined by '+' (e.g. 0+1); got {value!r}.")
        return tuple(int(v) for v in items)
    if isinstance(current, bool):
        if value in (0, 1, True, False):
            return bool(value)
        raise ValueError(f"{where} must be 0/1 or true/false; got {value!r}.")
    if current is None or isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number; got {value!r}.")
        return float(value)
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ValueError(f"{where} must be a whole number; got {value!r}.")
        return int(value)
    return value


def positive(name: str, value: float, algorithm: str, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is positive (or zero when allowed)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"parameter {name!r} of selector {algorithm!r} must be {bound}; got {value}.")


def at_least(name: str, value: int, minimum: int, algorithm: str) -> None:
    """Raise ``ValueError`` unless ``value >= minimum``."""
    if value < minimum:
        raise ValueError(f"parameter {name!r} of selector {algorithm!r} must be at least {minimum}; got {value}.")


def unit(name: str, value: float, algorithm: str) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"parameter {name!r} of selector {algorithm!r} must lie in [0, 1]; got {value}.")
