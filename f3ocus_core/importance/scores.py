"""The result of scoring: one raw value per layer and its normalisation to a probability vector.

Clients send ``normalized`` (the paper's S_i^l = raw_l / sum_k raw_k). Raw values of different clients
can differ by orders of magnitude, so only the normalised ones are comparable. The server's optimiser
rejects negative scores, hence every scorer must produce raw values that are finite and non-negative,
and at least one must be positive; anything else is an error here, never a silent zero or NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerScores:
    """Per-layer importance of one model on one client's batch.

    Attributes
    ----------
    method : str
        The scorer that produced the values (one of ``SCORERS``).
    raw : np.ndarray
        ``(L,)`` float64 values before normalisation (for LNTK: lambda_1 of each layer's NTK).
    normalized : np.ndarray
        ``(L,)`` float64, non-negative, finite, sums to 1: what the client sends.
    layer_names : tuple[str, ...]
        The layer ids of the :class:`~f3ocus_core.layers.LayerMap`, in the same order.
    """

    method: str
    raw: np.ndarray
    normalized: np.ndarray
    layer_names: tuple[str, ...]

    def top(self, budget: int) -> list[int]:
        """Indices of the ``budget`` highest-scoring layers, best first (ties: lower index first).

        This is the whole selection rule of "LNTK alone": each client takes its own top-b layers.
        """
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}.")
        order = np.argsort(-self.normalized, kind="stable")
        return [int(i) for i in order[:budget]]


def layer_scores_from_raw(method: str, raw: np.ndarray, layer_names: tuple[str, ...]) -> LayerScores:
    """Check ``raw`` and normalise it to sum 1.

    Raises
    ------
    ValueError
        If the length does not match the layers, a value is not finite or is negative (naming the
        layer), or every value is zero (normalisation impossible).
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    if raw.shape[0] != len(layer_names):
        raise ValueError(f"Scorer {method!r} returned {raw.shape[0]} values for {len(layer_names)} layers.")
    for name, value in zip(layer_names, raw):
        if not np.isfinite(value):
            raise ValueError(
                f"Scorer {method!r} gave a non-finite score ({value}) for layer {name!r}; "
                "check the model's weights and the batch for NaN or inf."
            )
        if value < 0:
            raise ValueError(
                f"Scorer {method!r} gave a negative score ({value}) for layer {name!r}; scores must be non-negative."
            )
    total = raw.sum()
    if total <= 0:
        raise ValueError(
            f"Scorer {method!r} gave a score of exactly 0 to every layer, so the scores cannot be "
            "normalised; the gradients vanish on this batch (check the labels, the head and the "
            "batch, or use another scorer)."
        )
    normalized = raw / total
    raw.setflags(write=False)
    normalized.setflags(write=False)
    return LayerScores(method=method, raw=raw, normalized=normalized, layer_names=tuple(layer_names))
