"""Data-free baseline scorers: random layers (FD), the last layers (Last), weight magnitude."""

from __future__ import annotations

import numpy as np
import torch

from f3ocus_core.importance.context import ScoringContext


def fd_scores(ctx: ScoringContext) -> np.ndarray:
    """FD, federated dropout: a uniformly random score per layer, drawn per client and round.

    ``raw_l ~ U(0, 1]`` i.i.d. from the pair ``(ctx.seed, ctx.client_seed)``, so the top-b layers are
    a uniformly random b-subset, different between clients and rounds and the same when a client
    rescores a round. Reference: Caldas et al., "Expanding the Reach of Federated Learning by Reducing
    Client Resource Requirements", arXiv 1812.07210 (2018).
    """
    rng = np.random.default_rng([ctx.seed, ctx.client_seed])
    return 1.0 - rng.random(len(ctx.layer_map))


def last_scores(ctx: ScoringContext) -> np.ndarray:
    """Last: ``raw_l = l + 1``, so the top-b layers are the last b layers of the layer map.

    The usual "fine-tune the top layers" baseline (e.g. Yosinski et al., "How transferable are
    features in deep neural networks?", NeurIPS 2014). For two-tower models the layer map numbers the
    layers tower by tower, so "last" means the last layers of the last tower.
    """
    return np.arange(1, len(ctx.layer_map) + 1, dtype=np.float64)


def magnitude_scores(ctx: ScoringContext) -> np.ndarray:
    """Magnitude: mean absolute weight of the layer, ``raw_l = (1/|θ_l|) Σ_{θ∈l} |θ|``.

    Magnitude-based importance as in Han et al., "Learning both Weights and Connections for Efficient
    Neural Networks", NeurIPS 2015, aggregated per layer by the mean so that layers of different size
    (two-tower models) are comparable.
    """
    scores = []
    with torch.no_grad():
        for params in ctx.layer_params:
            total = sum(float(p.detach().abs().double().sum()) for _, p in params)
            count = sum(p.numel() for _, p in params)
            scores.append(total / count)
    return np.array(scores)
