"""GraSP baseline: effect of a layer's weights on gradient flow, through a Hessian-gradient product."""

from __future__ import annotations

import numpy as np
import torch

from f3ocus_core.importance.context import ScoringContext
from f3ocus_core.importance.gradient import loss_gradients


def grasp_scores(ctx: ScoringContext) -> np.ndarray:
    """GraSP: ``raw_l = |Σ_{θ∈l} θ ⊙ (H g)_θ|``.

    GraSP scores weights by ``S(θ) = -θ ⊙ H g`` (H the Hessian, g the gradient of the batch loss, both
    over all scored layers), the first-order change of the gradient norm ``||g||²/2`` when θ is
    removed. Reference: Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving
    Gradient Flow", ICLR 2020. The per-layer sum is signed; a layer matters for gradient flow in
    either direction, so the non-negative score is its absolute value (as Lubana & Dick, ICLR 2021,
    argue for GraSP's magnitude).
    """
    grads = loss_gradients(ctx, create_graph=True)
    flat = [g for layer in grads for g in layer]
    if not any(g.requires_grad for g in flat):
        raise ValueError("GraSP needs second derivatives, but the gradients do not depend on the weights.")
    grad_dot_fixed_grad = torch.stack([(g * g.detach()).sum() for g in flat if g.requires_grad]).sum()
    hessian_grad = torch.autograd.grad(grad_dot_fixed_grad, ctx.all_params(), allow_unused=True)
    scores = []
    position = 0
    for name, params in zip(ctx.layer_map.names, ctx.layer_params):
        total = torch.zeros((), dtype=torch.float64)
        for (_, param), hg in zip(params, hessian_grad[position : position + len(params)]):
            if hg is not None:
                total = total + (param.detach().double() * hg.double()).sum()
        if not torch.isfinite(total):
            raise ValueError(f"GraSP's Hessian-gradient product of layer {name!r} is not finite.")
        scores.append(abs(float(total)))
        position += len(params)
    return np.array(scores)
