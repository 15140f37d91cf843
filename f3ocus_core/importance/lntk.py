"""The F3OCUS score: principal eigenvalue of each layer's neural tangent kernel (LNTK).

Θ^l(X, X) = ∇_{θ^l} f(X) ∇_{θ^l} f(X)ᵀ over a local batch of n samples and κ outputs per sample, and
the raw score of layer l is its largest eigenvalue λ_1^l (Saha et al., "F3OCUS", CVPR 2025,
arXiv 2411.11912). λ_1 is the largest rate at which gradient descent on layer l alone can move the
outputs on this data, so it measures how much training that layer can change the model's predictions.
Clients send S^l = λ_1^l / Σ_k λ_1^k; there is no normalisation by parameter count.

Θ^l is formed exactly by :func:`~f3ocus_core.importance.gram.layer_grams` (never the whole-model
Jacobian) over the outputs of the configured reduction (:mod:`.outputs`). λ_1 comes from float64
``eigvalsh`` for up to :data:`DENSE_ROWS` rows and from Lanczos iteration (ARPACK ``eigsh``, which
needs only products with Θ^l) above that, so the eigen step costs O(rows²) per iteration rather than
O(rows³).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import eigsh

from f3ocus_core.importance.context import ScoringContext
from f3ocus_core.importance.gram import layer_grams
from f3ocus_core.importance.outputs import reduced_outputs

#: Largest Gram for which all eigenvalues are computed densely; larger ones use Lanczos.
DENSE_ROWS = 1024


def principal_eigenvalue(gram: torch.Tensor) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite matrix, in float64."""
    symmetric = 0.5 * (gram + gram.T).double()
    if symmetric.shape[0] <= DENSE_ROWS:
        return float(torch.linalg.eigvalsh(symmetric)[-1].clamp_min(0.0))
    start = np.ones(symmetric.shape[0])
    value = eigsh(symmetric.cpu().numpy(), k=1, which="LA", v0=start, return_eigenvectors=False)[0]
    return max(0.0, float(value))


def lntk_scores(ctx: ScoringContext, strategy: str = "auto") -> np.ndarray:
    """λ_1 of Θ^l = J_l J_lᵀ for every layer, over the outputs of ``ctx.reduction``.

    ``strategy`` selects how the Grams are formed (``"auto"``: fast and exact; ``"rows"``: per-row
    gradients, the straightforward reference); both give the same values up to float rounding.
    """

    def outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return reduced_outputs(model, batch, ctx.reduction, ctx.projection_dim, ctx.seed)

    grams = layer_grams(ctx.model, ctx.batch, ctx.layer_params, outputs, strategy=strategy)
    return np.array([principal_eigenvalue(gram) for gram in grams])
