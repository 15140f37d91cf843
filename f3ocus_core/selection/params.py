"""Hyperparameters of the selectors: defaults in one frozen dataclass per selector, checked by name."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def resolve_params(defaults: T, algorithm: str, params: dict[str, Any]) -> T:
    """``defaults`` with ``params`` applied; unknown keys and wrong types raise ``ValueError``.

    Numbers arrive from run configs as ``int`` or ``float``: an ``int`` field accepts a whole float,
    a ``bool`` field accepts 0/1, a ``float`` field any number.
    """
    known = {f.name: f for f in fields(defaults)}
    changes = {}
    for key, value in params.items():
        if key not in known:
            raise ValueError(f"unknown parameter {key!r} for selector {algorithm!r}; "
                             f"known: {', '.join(sorted(known)) or 'none'}.")
        current = getattr(defaults, key)
        changes[key] = _coerce(algorithm, key, value, current)
    result = replace(defaults, **changes)
    check = getattr(result, "check", None)
    if check is not None:
        check()
    return result


def _coerce(algorithm: str, key: str, value: Any, current: Any) -> Any:
    where = f"parameter {key!r} of selector {algorithm!r}"
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
