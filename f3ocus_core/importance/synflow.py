"""SynFlow baseline: data-free synaptic flow through the absolute-valued network."""

from __future__ import annotations

import numpy as np
import torch

from f3ocus_core.importance.context import ScoringContext, restored_weights
from f3ocus_core.importance.outputs import check_finite
from f3ocus_core.models import logits_of, model_inputs


def all_ones_input(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One example shaped like ``batch``: floating inputs set to 1, integer inputs (ids, masks) kept.

    Token ids have no "all-ones" analogue, so SynFlow depends on the data only through the first
    example's token ids and masks, never through its image or labels.
    """
    single = {key: value[:1] for key, value in model_inputs(batch).items()}
    return {key: torch.ones_like(value) if value.is_floating_point() else value for key, value in single.items()}


def synflow_scores(ctx: ScoringContext) -> np.ndarray:
    """SynFlow: ``raw_l = Σ_{θ∈l} |θ ⊙ ∂R/∂θ|`` with ``R = 1ᵀ f(1; |θ|)``.

    Every parameter is replaced by its absolute value, an all-ones input is passed, and R is the sum
    of the logits (Tanaka et al., "Pruning neural networks without any data by iteratively
    conserving synaptic flow", NeurIPS 2020). In a ReLU network every term θ ∂R/∂θ is non-negative;
    LayerNorm and GELU can make some negative, so their absolute values are summed. The weights are
    restored bit for bit afterwards.
    """
    inputs = all_ones_input(ctx.batch)
    params = ctx.all_params()
    with restored_weights(ctx.model):
        with torch.no_grad():
            for param in ctx.model.parameters():
                param.abs_()
        logits = logits_of(ctx.model, inputs)
        check_finite(logits, "logits of the absolute-valued model")
        grads = torch.autograd.grad(logits.sum(), params, allow_unused=True)
        scores = []
        position = 0
        for name, layer in zip(ctx.layer_map.names, ctx.layer_params):
            total = 0.0
            for (_, param), grad in zip(layer, grads[position : position + len(layer)]):
                if grad is not None:
                    total += float((param.detach().double() * grad.double()).abs().sum())
            if not np.isfinite(total):
                raise ValueError(f"SynFlow's score of layer {name!r} is not finite.")
            scores.append(total)
            position += len(layer)
    return np.array(scores)
