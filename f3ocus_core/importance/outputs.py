"""Which model outputs the NTK is taken over: the output reduction, and batch checks.

The layer NTK Θ^l = J_l J_lᵀ has one row per (sample, output). Two reductions of the outputs:

- ``"logits"``: all ``κ = num_labels`` answer-head logits. Exact, but Θ^l is ``(n·κ) x (n·κ)`` and the
  cost of scoring grows linearly in κ, so this is only practical for small heads.
- ``"projection"``: ``k = projection_dim`` seeded Gaussian projections of the logits,
  ``f(X) = logits(X) P`` with ``P ∈ R^{κ x k}``, entries ``N(0, 1/k)``. Then ``E[P Pᵀ] = I``, so
  ``E[Θ_P] `` has the trace of the exact NTK and, as ``k`` grows, the spectrum of ``Θ_P`` approaches the
  exact one (Johnson-Lindenstrauss). The same seed gives the same ``P`` on every client, so their
  scores measure the same thing. Works for any head size (VQA heads have thousands of answers).

The default is ``"projection"`` with ``k = 1``: scoring then costs about one training step (the
benchmark measures it), and since clients send normalised scores, the common scale factor that the
projection introduces cancels.
"""

from __future__ import annotations

import math

import torch

from f3ocus_core.models import logits_of

REDUCTIONS: tuple[str, ...] = ("logits", "projection")
DEFAULT_REDUCTION = "projection"
DEFAULT_PROJECTION_DIM = 1


def check_batch(batch: dict[str, torch.Tensor]) -> int:
    """The batch size ``n``; raise ``ValueError`` for an empty or label-less batch."""
    if not isinstance(batch, dict) or "labels" not in batch:
        raise ValueError("The batch must be a dict of tensors with a 'labels' entry (n x num_labels).")
    sizes = {key: int(value.shape[0]) for key, value in batch.items() if torch.is_tensor(value)}
    n = sizes["labels"]
    if n == 0 or any(size == 0 for size in sizes.values()):
        raise ValueError(f"The batch is empty (sizes {sizes}); score layers on at least one example.")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"The batch's tensors disagree on the number of examples: {sizes}.")
    return n


def check_reduction(reduction: str, projection_dim: int) -> None:
    """Raise ``ValueError`` for an unknown reduction or a projection dimension below 1."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown scoring reduction {reduction!r}; choose one of {REDUCTIONS}.")
    if reduction == "projection" and (not isinstance(projection_dim, int) or projection_dim < 1):
        raise ValueError(f"projection_dim must be an integer >= 1, got {projection_dim!r}.")


def projection_matrix(num_outputs: int, k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The seeded ``(num_outputs, k)`` Gaussian projection with entries ``N(0, 1/k)``."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(num_outputs, k, generator=generator, dtype=torch.float64) / math.sqrt(k)
    return matrix.to(dtype)


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``values`` holds NaN or inf."""
    if not torch.isfinite(values).all():
        raise ValueError(
            f"The model's {what} are not finite (NaN or inf) on this batch; check the weights "
            "(a diverged update?) and the inputs before scoring."
        )


def reduced_outputs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    reduction: str,
    projection_dim: int,
    seed: int,
) -> torch.Tensor:
    """The ``(n, κ)`` outputs the NTK is taken over (see the module docstring)."""
    logits = logits_of(model, batch)
    check_finite(logits, "logits")
    if reduction == "logits":
        return logits
    projection = projection_matrix(logits.shape[-1], projection_dim, seed, dtype=logits.dtype)
    return logits @ projection.to(logits.device)
