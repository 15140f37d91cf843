"""Which model outputs the NTK is taken over: the output reduction, and batch checks.

The layer NTK Θ^l = J_l J_lᵀ has one row per (sample, output). For an answer head whose last module
is a linear map ``logits = φ Wᵀ + b`` (``W ∈ R^{κ x D}``, φ the head's D penultimate features), every
row of the Jacobian is a combination of W's columns: ``J_l = (I_n ⊗ W) J_l^φ``. Writing
``W = U Σ Vᵀ`` (thin SVD), the NTK over outputs ``logits · P`` for an orthonormal ``P ∈ R^{κ x k}``
is the compression ``(I_n ⊗ Pᵀ) Θ^l (I_n ⊗ P)``, whose largest eigenvalue is at most λ_1(Θ^l), with
equality when the top eigenvector of Θ^l lies in ``span(I_n ⊗ P)`` (Cauchy interlacing /
Rayleigh-Ritz). Three reductions:

- ``"head"`` (default): ``P = U_k``, the top-``k`` left singular vectors of the answer head's W
  (``k = projection_dim``). Θ^l weighs the head's output directions by ``σ_i²``, so the leading ones
  carry most of its top eigenvalue; on pretrained heads σ decays fast and ``k = 2`` agrees with the
  exact score (``benchmarks/bench_scoring.py`` prints the agreement). P depends only on the client's
  own head, never on a seed, so it is fixed for a client until its head changes, and for
  ``k ≥ rank(W) = min(κ, D)`` it is exact.
- ``"logits"``: exact, all κ answer logits. When ``κ > D`` the logits are rotated onto U's D columns
  first: the same nonzero eigenvalues with ``n·D`` instead of ``n·κ`` rows, so a 3,129-answer head
  needs no cap. Cost grows with ``min(κ, D)``.
- ``"projection"``: ``k`` seeded Gaussian projections ``P ∈ R^{κ x k}``, entries ``N(0, 1/k)``, so
  ``E[P Pᵀ] = I``. It needs no linear head. Its error is *not* a common factor that the
  normalisation removes: ``λ_1`` of the compression depends on how P aligns with each layer's own top
  eigenvector, which differs between layers, so each layer's score is scaled by its own random
  factor and the ranking changes with the seed. Only a scalar multiplying every Θ^l alike (such as
  the ``1/k`` in the entries) cancels.

``"head"`` and ``"logits"`` find the head as the ``torch.nn.Linear`` whose output *is* the logits
tensor (ViLT: ``classifier[-1]``).
"""

from __future__ import annotations

import math

import torch

from f3ocus_core.models import logits_of

REDUCTIONS: tuple[str, ...] = ("head", "logits", "projection")
DEFAULT_REDUCTION = "head"
DEFAULT_PROJECTION_DIM = 2


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
    if reduction != "logits" and (not isinstance(projection_dim, int) or projection_dim < 1):
        raise ValueError(f"projection_dim (scoring.projection-dim) must be an integer >= 1, got {projection_dim!r}.")


def projection_matrix(num_outputs: int, k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The seeded ``(num_outputs, k)`` Gaussian projection with entries ``N(0, 1/k)``."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(num_outputs, k, generator=generator, dtype=torch.float64) / math.sqrt(k)
    return matrix.to(dtype)


def head_basis(weight: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """The top-``k`` left singular vectors of a head weight ``(κ, D)``: float64 ``(κ, min(k, κ, D))``.

    ``k=None`` keeps all ``min(κ, D)`` of them (the exact rotation of the ``"logits"`` reduction).
    """
    left, _, _ = torch.linalg.svd(weight.detach().double().cpu(), full_matrices=False)
    return left if k is None else left[:, :k]


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` if ``values`` holds NaN or inf."""
    if not torch.isfinite(values).all():
        raise ValueError(
            f"The model's {what} are not finite (NaN or inf) on this batch; check the weights "
            "(a diverged update?) and the inputs before scoring."
        )


def logits_and_head(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.nn.Linear | None]:
    """The ``(n, κ)`` logits and the linear module that produced them (``None`` if none did)."""
    produced: dict[int, torch.nn.Linear] = {}

    def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
        if isinstance(module, torch.nn.Linear):  # hooked on linear modules only
            produced[id(output)] = module

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) is torch.nn.Linear]
    try:
        logits = logits_of(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return logits, produced.get(id(logits))


def reduced_outputs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    reduction: str,
    projection_dim: int,
    seed: int,
) -> torch.Tensor:
    """The ``(n, k)`` outputs the NTK is taken over (see the module docstring).

    Raises
    ------
    ValueError
        Non-finite logits, or ``"head"`` on a model whose logits no linear module produces.
    """
    logits, head = logits_and_head(model, batch)
    check_finite(logits, "logits")
    if reduction == "projection":
        projection = projection_matrix(logits.shape[-1], projection_dim, seed, dtype=logits.dtype)
        return logits @ projection.to(logits.device)
    if head is None:
        if reduction == "logits":
            return logits
        raise ValueError(
            "scoring.reduction='head' needs an answer head whose last module is a torch.nn.Linear "
            "returning the logits; this model has none. Use scoring.reduction='projection' or 'logits'."
        )
    if reduction == "logits" and head.out_features <= head.in_features:
        return logits
    basis = head_basis(head.weight, None if reduction == "logits" else projection_dim)
    return logits @ basis.to(dtype=logits.dtype, device=logits.device)
