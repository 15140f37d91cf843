"""One interface for every layer scorer: ``score_layers(model, batch, layer_map, method=...)``.

The scorer is chosen by name (one config key, ``scoring.method``), so an experiment swaps it without
touching code. Every scorer sees the model in scoring state (eval mode, gradients with respect to each
layer's own weights even when frozen) and leaves it exactly as it found it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from f3ocus_core.importance import fishmask, gradient, grasp, structural, synflow
from f3ocus_core.importance.context import ScoringContext, scoring_state
from f3ocus_core.importance.lntk import lntk_scores
from f3ocus_core.importance.outputs import (
    DEFAULT_PROJECTION_DIM,
    DEFAULT_REDUCTION,
    check_batch,
    check_reduction,
)
from f3ocus_core.importance.scores import LayerScores, layer_scores_from_raw
from f3ocus_core.layers import LayerMap

Scorer = Callable[[ScoringContext], np.ndarray]

#: Name -> scorer function returning the raw (L,) values.
SCORER_FUNCTIONS: dict[str, Scorer] = {
    "lntk": lntk_scores,
    "fd": structural.fd_scores,
    "last": structural.last_scores,
    "magnitude": structural.magnitude_scores,
    "fishmask": fishmask.fishmask_scores,
    "gradflow": gradient.gradflow_scores,
    "grasp": grasp.grasp_scores,
    "snip": gradient.snip_scores,
    "rgn": gradient.rgn_scores,
    "synflow": synflow.synflow_scores,
    "fedselect": gradient.fedselect_scores,
    "spt": gradient.spt_scores,
}

#: The scorer names ``score_layers`` accepts. "LNTK alone" is scorer "lntk" + selection "local".
SCORERS: tuple[str, ...] = tuple(SCORER_FUNCTIONS)


def score_layers(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    layer_map: LayerMap,
    method: str = "lntk",
    reduction: str = DEFAULT_REDUCTION,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
    client_seed: int = 0,
) -> LayerScores:
    """Score every layer of ``model`` on ``batch`` with scorer ``method``.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face model or a PEFT wrapper of one; it is left exactly as it was.
    batch : dict[str, torch.Tensor]
        Model inputs plus ``labels`` (n x num_labels); see :mod:`f3ocus_core.models`.
    layer_map : LayerMap
        The layers to score (from :func:`f3ocus_core.layers.layer_map_for`).
    method : str
        One of :data:`SCORERS`.
    reduction, projection_dim : str, int
        Which outputs the NTK is taken over (LNTK only; see :mod:`.outputs`).
    seed : int
        The run's seed for this round, the same on every client: seeds the ``"projection"``
        reduction's P (shared, so that all clients measure the same outputs) and, with
        ``client_seed``, the random scorer "fd".
    client_seed : int
        A non-negative number that differs between clients and stays fixed for a client (the client
        app passes its partition id), so that "fd" draws different layers per client and round.

    Raises
    ------
    ValueError
        Unknown method or reduction, negative seeds, empty batch, a layer with no parameters (named), non-finite
        outputs or scores (the layer named), or every score exactly zero.
    """
    if method not in SCORER_FUNCTIONS:
        raise ValueError(f"Unknown scoring method {method!r}; choose one of {SCORERS}.")
    check_reduction(reduction, projection_dim)
    if seed < 0 or client_seed < 0:
        raise ValueError(f"seed and client_seed must be >= 0, got {seed} and {client_seed}.")
    check_batch(batch)
    layer_params = layer_map.own_parameters(model)
    _check_weights(layer_map, layer_params)
    ctx = ScoringContext(
        model=model,
        batch=batch,
        layer_map=layer_map,
        layer_params=layer_params,
        reduction=reduction,
        projection_dim=projection_dim,
        seed=seed,
        client_seed=client_seed,
    )
    with scoring_state(model, layer_params):
        raw = SCORER_FUNCTIONS[method](ctx)
    return layer_scores_from_raw(method, raw, layer_map.names)


def _check_weights(layer_map: LayerMap, layer_params: list[list[tuple[str, torch.nn.Parameter]]]) -> None:
    """Raise ``ValueError`` naming the layer and parameter if any own weight is NaN or inf."""
    for name, params in zip(layer_map.names, layer_params):
        for param_name, param in params:
            if not torch.isfinite(param.detach().sum()) and not torch.isfinite(param.detach()).all():
                raise ValueError(
                    f"Layer {name!r} has non-finite weights in {param_name!r}; the model cannot be "
                    "scored (a diverged update?)."
                )
