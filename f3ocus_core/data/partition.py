"""Seeded splits of one data set into client parts: IID, or Dirichlet label shift.

Both return, per client, the sorted indices of the items it holds; every item goes to exactly one
client. They take only sizes and labels, so they serve VQA answers and classification labels alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iid_partition(num_items: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``num_items`` items with ``seed`` and deal them into ``num_clients`` near-equal parts."""
    _check_clients(num_items, num_clients)
    order = np.random.default_rng(seed).permutation(num_items)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: Sequence[object], num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed split: for each label, its items are shared out by proportions ~ Dir(alpha).

    Small ``alpha`` gives each client few labels (strong shift); large ``alpha`` approaches IID. The
    draw is repeated (with the same generator) until every client holds at least ``min_size`` items,
    as in Hsu et al. 2019 and FedDAT's label-shift setting.

    Parameters
    ----------
    labels : Sequence
        One hashable label per item (for multi-label data, e.g. the first positive label).
    num_clients : int
        Number of parts.
    alpha : float
        Dirichlet concentration, > 0.
    seed : int
        Seed of the draw; the same seed gives the same split.
    min_size : int
        Fewest items a client may end up with.
    """
    _check_clients(len(labels), num_clients)
    if not alpha > 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}.")
    if min_size * num_clients > len(labels):
        raise ValueError(f"{len(labels)} items cannot give {num_clients} clients {min_size} each.")
    rng = np.random.default_rng(seed)
    keys = np.array([str(label) for label in labels])
    classes = np.unique(keys)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in classes:
            items = rng.permutation(np.flatnonzero(keys == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(items)).astype(int)
            for client, chunk in enumerate(np.split(items, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_size:
            return [np.sort(np.array(part, dtype=int)) for part in parts]
    raise ValueError(
        f"No Dirichlet(alpha={alpha}) split gave every one of {num_clients} clients {min_size} items "
        "in 1000 draws; raise alpha or lower the number of clients."
    )


def _check_clients(num_items: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"Number of clients must be >= 1, got {num_clients}.")
    if num_items < num_clients:
        raise ValueError(f"Cannot split {num_items} items among {num_clients} clients.")
