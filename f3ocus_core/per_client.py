"""Run-config values given once for every client or once per client (``"2"`` or ``"4,2,2,4"``).

One rule for every such key (``selection.budget``, ``data.shift``, ``data.questions``): a
comma-separated list; a single value applies to every client, a longer list holds one value per
client in partition-id order (the first value is partition 0's). Errors name the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from f3ocus_core.errors import ConfigError

T = TypeVar("T")


def split_values(value: object, key: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``; a ``ConfigError`` naming ``key`` if nothing is left."""
    values = tuple(part.strip() for part in str(value).split(",") if part.strip())
    if not values:
        raise ConfigError(f"{key}: empty.")
    return values


def values_for(values: Sequence[T], num_clients: int, key: str, plural: str = "values", noun: str = "value") -> list[T]:
    """One value per client for ``num_clients`` clients: the single value repeated, or the list as given.

    Raises a ``ConfigError`` naming ``key`` when a list's length is not ``num_clients``.
    """
    if len(values) == 1:
        return [values[0]] * num_clients
    if len(values) != num_clients:
        raise ConfigError(
            f"{key}: {len(values)} {plural} given for {num_clients} clients; give one {noun}, or one per client."
        )
    return list(values)


def values_of(
    values: Sequence[T], partition_ids: Sequence[int], key: str, plural: str = "values", noun: str = "value"
) -> list[T]:
    """The value of each client in ``partition_ids``: the single value, or the list's entry at its id.

    Raises a ``ConfigError`` naming ``key`` when a list has no entry for some partition id.
    """
    if not values:
        raise ConfigError(f"{key}: empty; give one {noun}, or one per client.")
    if len(values) == 1:
        return [values[0]] * len(partition_ids)
    missing = sorted({int(p) for p in partition_ids if not 0 <= int(p) < len(values)})
    if missing:
        raise ConfigError(
            f"{key}: {len(values)} {plural} given, but partition id(s) {missing} have "
            f"none; give one {noun}, or one per client (partition ids 0..{len(values) - 1})."
        )
    return [values[int(p)] for p in partition_ids]
