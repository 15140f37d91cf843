"""First-order baseline scorers built on the gradient g = ∇_θ L of the batch loss.

L is the task loss of :func:`f3ocus_core.models.loss_of` (ViLT's VQA binary cross-entropy) on the
scoring batch; g is taken with respect to each layer's own weights θ_l (frozen or not).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from f3ocus_core.importance.context import ScoringContext
from f3ocus_core.importance.outputs import check_finite
from f3ocus_core.models import logits_of, loss_of

#: SPT's share of all scored parameters that counts as "sensitive" (its tuning budget τ).
SPT_FRACTION = 0.01


def loss_gradients(ctx: ScoringContext, create_graph: bool = False) -> list[list[torch.Tensor]]:
    """Per layer, ``∇_θ L`` for each of the layer's own parameters (same order as ``layer_params``).

    Raises
    ------
    ValueError
        If the logits, the loss or a gradient is not finite (naming the layer).
    """
    logits = logits_of(ctx.model, ctx.batch)
    check_finite(logits, "logits")
    loss = loss_of(logits, ctx.batch)
    check_finite(loss, "loss")
    params = ctx.all_params()
    flat = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    grads: list[list[torch.Tensor]] = []
    position = 0
    for name, layer in zip(ctx.layer_map.names, ctx.layer_params):
        layer_grads = []
        for (_, param), grad in zip(layer, flat[position : position + len(layer)]):
            grad = torch.zeros_like(param) if grad is None else grad
            if not torch.isfinite(grad).all():
                raise ValueError(f"The loss gradient of layer {name!r} is not finite.")
            layer_grads.append(grad)
        grads.append(layer_grads)
        position += len(layer)
    return grads


def _per_layer(
    ctx: ScoringContext,
    grads: list[list[torch.Tensor]],
    fn: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor | float],
) -> np.ndarray:
    return np.array(
        [
            float(fn([p.detach().double() for _, p in params], [g.detach().double() for g in layer]))
            for params, layer in zip(ctx.layer_params, grads)
        ]
    )


def gradflow_scores(ctx: ScoringContext) -> np.ndarray:
    """GradFlow: the layer's share of gradient flow, ``raw_l = ||g_l||²``.

    Under gradient flow dθ/dt = -g the loss falls at rate dL/dt = -Σ_l ||g_l||², so ||g_l||² is how
    much layer l drives the loss down at the current weights. Reference: Lubana & Dick, "A Gradient
    Flow Framework for Analyzing Network Pruning", ICLR 2021.
    """
    grads = loss_gradients(ctx)
    return _per_layer(ctx, grads, lambda ps, gs: sum((g * g).sum() for g in gs))


def snip_scores(ctx: ScoringContext) -> np.ndarray:
    """SNIP: connection sensitivity summed over the layer, ``raw_l = Σ_{θ∈l} |g ⊙ θ|``.

    Reference: Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019.
    """
    grads = loss_gradients(ctx)
    return _per_layer(ctx, grads, lambda ps, gs: sum((g * p).abs().sum() for p, g in zip(ps, gs)))


def rgn_scores(ctx: ScoringContext) -> np.ndarray:
    """RGN, relative gradient norm: ``raw_l = ||g_l||₂ / ||θ_l||₂``.

    Reference: Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts",
    ICLR 2023 (Auto-RGN).
    """
    grads = loss_gradients(ctx)

    def ratio(ps: list[torch.Tensor], gs: list[torch.Tensor]) -> torch.Tensor:
        weight_norm = torch.sqrt(torch.stack([(p * p).sum() for p in ps]).sum())
        if weight_norm == 0:
            raise ValueError("RGN is undefined for a layer whose weights are all zero.")
        return torch.sqrt(torch.stack([(g * g).sum() for g in gs]).sum()) / weight_norm

    return _per_layer(ctx, grads, ratio)


def fedselect_scores(ctx: ScoringContext) -> np.ndarray:
    """FedSelect: how far local training moves the layer, ``raw_l = mean_{θ∈l} |Δθ|``.

    FedSelect personalises the parameters whose values change most in local training (Tamirisa et
    al., "FedSelect: Personalized Federated Learning with Customized Selection of Parameters for
    Fine-Tuning", CVPR 2024). Scoring must not train, so the local update is its one-step SGD
    approximation ``Δθ = -η g``; η cancels in the normalisation, leaving ``mean |g|`` per layer.
    """
    grads = loss_gradients(ctx)
    return _per_layer(ctx, grads, lambda ps, gs: sum(g.abs().sum() for g in gs) / sum(g.numel() for g in gs))


def spt_scores(ctx: ScoringContext) -> np.ndarray:
    """SPT: sensitivity of the layer's most sensitive parameters, ``raw_l = Σ_{θ∈l ∩ top-τ} g_θ²``.

    SPT scores a parameter by the first-order loss change of one gradient step, ``s_θ ∝ g_θ²``, keeps
    the globally top-τ parameters (τ = :data:`SPT_FRACTION` of all scored ones) and tunes the weight
    matrices that hold many of them. Reference: He et al., "Sensitivity-Aware Visual
    Parameter-Efficient Fine-Tuning", ICCV 2023.
    """
    grads = loss_gradients(ctx)
    sensitivities = [torch.cat([(g.detach().double() ** 2).reshape(-1) for g in layer]) for layer in grads]
    everything = torch.cat(sensitivities)
    keep = max(1, int(SPT_FRACTION * everything.numel()))
    threshold = torch.topk(everything, keep).values[-1]
    return np.array([float(s[s >= threshold].sum()) for s in sensitivities])
