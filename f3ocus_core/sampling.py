"""Client sampling: which of the connected clients take part in a round's training.

A consortium larger than one round's capacity (time, bandwidth, the server's memory) trains a
sample of its clients each round (``clients-per-round``), as FedAvg's client fraction ``C`` does.
The F3OCUS layer selection then runs over the sampled clients only, and a layer's coverage counts
the sampled clients that trained it. Every connected client still evaluates every round, so the
accuracy curve stays comparable between rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

#: Mixed into the sampling seed so that the sample does not share a random stream with the
#: selectors or the fallback assignment, which also derive theirs from (seed, round).
_STREAM = 0x5A3D1E


def sample_clients(candidates: Sequence[T], per_round: int, seed: int, server_round: int) -> list[T]:
    """``per_round`` of ``candidates``, drawn uniformly without replacement, in their given order.

    Parameters
    ----------
    candidates : Sequence
        The connected clients, in a stable order (the strategy sorts them by partition id once
        it knows them, by node id before): the same order, seed and round give the same sample.
    per_round : int
        How many to take; ``0`` (or at least ``len(candidates)``) takes them all.
    seed, server_round : int
        The run's seed and the round: each round draws afresh.
    """
    if per_round < 0:
        raise ValueError(f"clients-per-round: expected 0 (all clients) or a positive number, got {per_round}.")
    if per_round == 0 or per_round >= len(candidates):
        return list(candidates)
    rng = np.random.default_rng([seed % 2**63, server_round, _STREAM])
    chosen = np.sort(rng.choice(len(candidates), size=per_round, replace=False))
    return [candidates[i] for i in chosen]
