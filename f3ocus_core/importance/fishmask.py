"""FishMask baseline: per-layer empirical Fisher information from per-sample loss gradients."""

from __future__ import annotations

import numpy as np
import torch

from f3ocus_core.importance.context import ScoringContext
from f3ocus_core.importance.gram import layer_grams
from f3ocus_core.importance.outputs import check_finite
from f3ocus_core.models import logits_of


def per_sample_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(n, 1)``: each example's binary cross-entropy summed over labels (ViLT's VQA loss)."""
    logits = logits_of(model, batch)
    check_finite(logits, "logits")
    labels = batch["labels"].to(logits.dtype)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return losses.sum(dim=1, keepdim=True)


def fishmask_scores(ctx: ScoringContext) -> np.ndarray:
    """FishMask: ``raw_l = Σ_{θ∈l} F̂_θ`` with ``F̂_θ = (1/n) Σ_s (∂ℓ_s/∂θ)²`` (empirical Fisher).

    Reference: Sung, Nair & Raffel, "Training Neural Networks with Fixed Sparse Masks", NeurIPS 2021,
    which keeps the parameters of largest empirical Fisher; per layer it is summed. The sum over the
    layer's parameters of per-sample squared gradients is the trace of the (n x n) Gram of per-sample
    loss gradients, which :func:`~f3ocus_core.importance.gram.layer_grams` forms without per-sample
    backward passes.
    """
    grams = layer_grams(ctx.model, ctx.batch, ctx.layer_params, per_sample_losses)
    return np.array([float(torch.trace(gram)) / ctx.batch_size for gram in grams])
