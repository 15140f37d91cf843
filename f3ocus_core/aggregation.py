"""Layer-wise averaging of partial updates: each layer is the example-weighted mean over the clients
that trained it; layers that no client trained keep their value, bit for bit.

Flower's FedAvg refuses replies whose keys differ between clients, and F3OCUS replies differ by
design, so the server uses this instead. Every update is checked against what the client was asked
to train before it is used.

LoRA (``aggregation.lora``). A LoRA module adds ``s B A`` to its frozen weight (``s = alpha / r``,
the same for every client, so it plays no part here). What the clients of a module jointly learned
is the example-weighted mean of their products, ``M = sum_k n_k B_k A_k / sum_k n_k``.

- ``separate`` averages A and B on their own: ``mean(B) mean(A)``. With every client starting the
  round from the same ``B0, A0`` and moving them by ``dB_k, dA_k``, its error is
  ``mean(dB dA) - mean(dB) mean(dA)``, the covariance of the clients' factor changes: zero for one
  client or identical changes, large when non-IID clients move apart.
- ``product`` (default) takes the truncated SVD of ``M`` to rank r and splits it evenly,
  ``B' = U_r sqrt(S_r)``, ``A' = sqrt(S_r) V_r^T``. ``M`` can have rank up to k r, so this is exact
  only when ``M`` has rank <= r (e.g. clients whose B share a column space); otherwise it is the best
  rank-r approximation of ``M`` (Eckart-Young), and since ``mean(B) mean(A)`` is also rank r, its
  error is never larger than ``separate``'s.

Measured by ``benchmarks/bench_aggregation.py`` (real LoRA updates of the default run: tiny ViLT
base, easy-vqa Dirichlet 0.5, default recipe, every client on every layer), the relative Frobenius
error against ``M`` is, median over modules, 4.6-8.1% for ``product`` and 8.5-44% for ``separate``;
docs/aggregation.md has the full table and why the other exact schemes were not chosen. A module
trained by a single client is that client's factors under both schemes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: The values of ``aggregation.lora``.
LORA_SCHEMES = ("product", "separate")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.(?P<rest>.+)$")


@dataclass
class PartialUpdate:
    """What one client sent back.

    Parameters
    ----------
    client : str
        Who sent it, for error messages.
    state : Mapping[str, np.ndarray]
        The trained tensors, by parameter name.
    num_examples : int
        The weight of this client in the average (its number of training examples).
    """

    client: str
    state: Mapping[str, np.ndarray]
    num_examples: int


def validate_update(
    update: PartialUpdate, expected_keys: list[str], global_state: Mapping[str, np.ndarray]
) -> None:
    """Raise ``ValueError`` unless ``update`` holds exactly ``expected_keys`` with the global shapes
    and dtypes, finite values, and a positive example count."""
    got, want = set(update.state), set(expected_keys)
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        raise ValueError(
            f"Client {update.client} sent keys that differ from its assignment: "
            f"{len(extra)} unexpected {extra[:2]}, {len(missing)} missing {missing[:2]}."
        )
    if update.num_examples <= 0:
        raise ValueError(f"Client {update.client} reported {update.num_examples} training examples.")
    for key, value in update.state.items():
        reference = global_state[key]
        if value.shape != reference.shape or value.dtype != reference.dtype:
            raise ValueError(
                f"Client {update.client} sent {key!r} as {value.dtype}{list(value.shape)}, "
                f"expected {reference.dtype}{list(reference.shape)}."
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"Client {update.client} sent non-finite values in {key!r}.")


def aggregate_layers(
    global_state: Mapping[str, np.ndarray], updates: list[PartialUpdate], lora: str = "product"
) -> dict[str, np.ndarray]:
    """The new global state: per parameter, the example-weighted mean of the updates that hold it;
    with ``lora="product"``, each LoRA module trained by two or more clients instead gets the
    rank-r factors of the mean of its products (:func:`lora_product_mean`).

    Parameters not in any update are the very arrays of ``global_state`` (unchanged); a module
    trained by one client keeps that client's factors bit for bit under both schemes. Validate each
    update with :func:`validate_update` first; this function trusts its input.

    Raises
    ------
    ValueError
        Naming ``aggregation.lora`` for an unknown scheme; if a client sent one factor of a LoRA
        module without the other.
    """
    if lora not in LORA_SCHEMES:
        raise ValueError(f"aggregation.lora: unknown value {lora!r}; choose one of {list(LORA_SCHEMES)}.")
    totals: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for update in updates:
        for key, value in update.state.items():
            contribution = value.astype(np.float64) * update.num_examples
            totals[key] = totals[key] + contribution if key in totals else contribution
            weights[key] = weights.get(key, 0.0) + update.num_examples
    new_state = dict(global_state)
    for key, total in totals.items():
        new_state[key] = (total / weights[key]).astype(global_state[key].dtype)
    if lora == "product":
        for a_key, b_key in lora_pairs(totals).items():
            holders = [update for update in updates if a_key in update.state]
            if any((a_key in update.state) != (b_key in update.state) for update in updates):
                raise ValueError(f"A client sent only one of the LoRA factors {a_key!r} and {b_key!r}.")
            if len(holders) < 2:
                continue
            b_new, a_new, _ = lora_product_mean(
                [(update.state[b_key], update.state[a_key]) for update in holders],
                [update.num_examples for update in holders],
            )
            new_state[b_key] = b_new.reshape(global_state[b_key].shape).astype(global_state[b_key].dtype)
            new_state[a_key] = a_new.reshape(global_state[a_key].shape).astype(global_state[a_key].dtype)
    return new_state


def lora_pairs(keys: Iterable[str]) -> dict[str, str]:
    """``{A key: B key}`` for every LoRA module whose two factors are both in ``keys``.

    Pairs are found from peft's names: ``<module>.lora_A.<adapter>.weight`` goes with
    ``<module>.lora_B.<adapter>.weight``.
    """
    keys = set(keys)
    pairs = {}
    for key in sorted(keys):
        match = _LORA_KEY.match(key)
        if match and match["factor"] == "A":
            partner = f"{match['module']}.lora_B.{match['rest']}"
            if partner in keys:
                pairs[key] = partner
    return pairs


def lora_product_mean(
    factors: list[tuple[np.ndarray, np.ndarray]], weights: list[float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank-r factors ``(B', A')`` of the weighted mean of the products ``B_k A_k``, and the
    relative Frobenius error of ``B'A'`` against that mean (0 when the mean has rank <= r).

    ``B_k`` is ``(out, r)`` and ``A_k`` ``(r, in)`` (trailing singleton dimensions of a convolution's
    factors are flattened). The mean ``M = sum_k w_k B_k A_k / sum_k w_k`` has rank <= k r, so it is
    cut to rank r by its truncated SVD ``U_r S_r V_r^T`` (the best rank-r approximation, Eckart-Young)
    and split evenly: ``B' = U_r sqrt(S_r)``, ``A' = sqrt(S_r) V_r^T``, each pair's sign chosen so
    that the largest entry of each column of ``B'`` is positive (the factors then do not depend on
    the order of the clients). The SVD is taken of the
    k r x k r core of ``M = [w_1 B_1 ... w_k B_k] [A_1; ...; A_k]`` after two QR factorisations, so
    it costs O((out + in) (k r)^2) rather than an SVD of the full ``out x in`` matrix.
    """
    total = float(sum(weights))
    rank = factors[0][1].shape[0]
    left = np.concatenate(
        [b.reshape(b.shape[0], rank).astype(np.float64) * (w / total) for (b, _), w in zip(factors, weights)], axis=1
    )
    right = np.concatenate([a.reshape(rank, -1).astype(np.float64) for _, a in factors], axis=0)
    q_left, r_left = np.linalg.qr(left)
    q_right, r_right = np.linalg.qr(right.T)
    u, singular, vt = np.linalg.svd(r_left @ r_right.T)
    root = np.zeros(rank)
    root[: min(rank, len(singular))] = np.sqrt(singular[:rank])
    u = np.pad(u, ((0, 0), (0, max(0, rank - u.shape[1]))))
    vt = np.pad(vt, ((0, max(0, rank - vt.shape[0])), (0, 0)))
    b_new = (q_left @ u[:, :rank]) * root
    a_new = root[:, None] * (vt[:rank] @ q_right.T)
    # An SVD fixes each singular pair only up to sign, and which sign LAPACK returns can change with
    # the clients' order; make the largest entry of each column of B' positive, so the factors do not.
    rows = np.argmax(np.abs(b_new), axis=0)
    signs = np.where(b_new[rows, np.arange(rank)] < 0, -1.0, 1.0)
    b_new, a_new = b_new * signs, signs[:, None] * a_new
    norm = float(np.sqrt(np.sum(singular**2)))
    error = float(np.sqrt(np.sum(singular[rank:] ** 2)) / norm) if norm > 0 else 0.0
    return b_new, a_new, error


def coverage(updates_layers: list[list[int]], num_layers: int) -> np.ndarray:
    """How many clients trained each layer (``n_l``), from each client's list of layer indices."""
    counts = np.zeros(num_layers, dtype=int)
    for layers in updates_layers:
        counts[np.asarray(layers, dtype=int)] += 1
    return counts
