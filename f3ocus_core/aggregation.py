"""Layer-wise averaging of partial updates: each layer is the example-weighted mean over the clients
that trained it; layers that no client trained keep their value, bit for bit.

Flower's FedAvg refuses replies whose keys differ between clients, and F3OCUS replies differ by
design, so the server uses this instead. Every update is checked against what the client was asked
to train before it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass
class PartialUpdate:
    """What one client sent back.

    Parameters
    ----------
    client : str
        Who sent it, for error messages.
    state : Mapping[str, np.ndarray]
        The trained tensors, by parameter name.
    num_examples : int
        The weight of this client in the average (its number of training examples).
    """

    client: str
    state: Mapping[str, np.ndarray]
    num_examples: int


def validate_update(
    update: PartialUpdate, expected_keys: list[str], global_state: Mapping[str, np.ndarray]
) -> None:
    """Raise ``ValueError`` unless ``update`` holds exactly ``expected_keys`` with the global shapes
    and dtypes, finite values, and a positive example count."""
    got, want = set(update.state), set(expected_keys)
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        raise ValueError(
            f"Client {update.client} sent keys that differ from its assignment: "
            f"{len(extra)} unexpected {extra[:2]}, {len(missing)} missing {missing[:2]}."
        )
    if update.num_examples <= 0:
        raise ValueError(f"Client {update.client} reported {update.num_examples} training examples.")
    for key, value in update.state.items():
        reference = global_state[key]
        if value.shape != reference.shape or value.dtype != reference.dtype:
            raise ValueError(
                f"Client {update.client} sent {key!r} as {value.dtype}{list(value.shape)}, "
                f"expected {reference.dtype}{list(reference.shape)}."
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"Client {update.client} sent non-finite values in {key!r}.")


def aggregate_layers(
    global_state: Mapping[str, np.ndarray], updates: list[PartialUpdate]
) -> dict[str, np.ndarray]:
    """The new global state: per parameter, the example-weighted mean of the updates that hold it.

    Parameters not in any update are the very arrays of ``global_state`` (unchanged). Validate each
    update with :func:`validate_update` first; this function trusts its input.
    """
    totals: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for update in updates:
        for key, value in update.state.items():
            contribution = value.astype(np.float64) * update.num_examples
            totals[key] = totals[key] + contribution if key in totals else contribution
            weights[key] = weights.get(key, 0.0) + update.num_examples
    new_state = dict(global_state)
    for key, total in totals.items():
        new_state[key] = (total / weights[key]).astype(global_state[key].dtype)
    return new_state


def coverage(updates_layers: list[list[int]], num_layers: int) -> np.ndarray:
    """How many clients trained each layer (``n_l``), from each client's list of layer indices."""
    counts = np.zeros(num_layers, dtype=int)
    for layers in updates_layers:
        counts[np.asarray(layers, dtype=int)] += 1
    return counts
