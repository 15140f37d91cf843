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

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: The values of ``aggregation.lora``.
LORA_SCHEMES = ("product", "separate")
#: The values of ``aggregation.robust``: the mean (empty), or a coordinate-wise robust statistic.
ROBUST_SCHEMES = ("", "median", "trimmed-mean")
#: A robust statistic is used for a parameter only when at least this many clients trained it.
ROBUST_MIN_CLIENTS = 3
#: ``trimmed-mean`` drops this fraction of the clients at each end of every coordinate (at least one).
TRIM_FRACTION = 0.2
_log = logging.getLogger(__name__)
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


def validate_update(update: PartialUpdate, expected_keys: list[str], global_state: Mapping[str, np.ndarray]) -> None:
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
    global_state: Mapping[str, np.ndarray],
    updates: list[PartialUpdate],
    lora: str = "product",
    max_share: float = 1.0,
    robust: str = "",
) -> dict[str, np.ndarray]:
    """The new global state: per parameter, the example-weighted mean of the updates that hold it;
    with ``lora="product"``, each LoRA module trained by two or more clients instead gets the
    rank-r factors of the mean of its products (:func:`lora_product_mean`).

    ``max_share`` caps one client's share of a parameter's weight (:func:`capped_shares`; 1 = no
    cap). ``robust`` (``"median"`` or ``"trimmed-mean"``, :data:`ROBUST_SCHEMES`) replaces the mean
    by that coordinate-wise, unweighted statistic for every parameter held by at least
    :data:`ROBUST_MIN_CLIENTS` updates (LoRA factors then each on their own, as under ``separate``).

    Parameters not in any update are the very arrays of ``global_state`` (unchanged); a module
    trained by one client keeps that client's factors bit for bit under both schemes. Validate each
    update with :func:`validate_update` and :func:`check_magnitude` first; this function trusts its
    input. Under that bound every result is finite in its dtype; a parameter that still came out
    NaN or inf would keep its old value (never seen; the guard keeps the promise unconditional).

    Raises
    ------
    ValueError
        Naming ``aggregation.lora`` / ``aggregation.robust`` for an unknown scheme; if a client
        sent one factor of a LoRA module without the other.
    """
    if lora not in LORA_SCHEMES:
        raise ValueError(f"aggregation.lora: unknown value {lora!r}; choose one of {list(LORA_SCHEMES)}.")
    if robust not in ROBUST_SCHEMES:
        raise ValueError(f"aggregation.robust: unknown value {robust!r}; choose one of {list(ROBUST_SCHEMES)}.")
    holders: dict[str, list[PartialUpdate]] = {}
    for update in updates:
        for key in update.state:
            holders.setdefault(key, []).append(update)
    robust_keys = {key for key, held in holders.items() if robust and len(held) >= ROBUST_MIN_CLIENTS}
    new_state = dict(global_state)
    for key, held in holders.items():
        values = [update.state[key].astype(np.float64) for update in held]
        if key in robust_keys:
            value = robust_mean(np.stack(values), robust)
        else:
            shares = capped_shares([update.num_examples for update in held], max_share)
            value = sum(share * v for share, v in zip(shares, values))
        new_state[key] = np.asarray(value).astype(global_state[key].dtype)
    if lora == "product":
        for a_key, b_key in lora_pairs(holders).items():
            if any((a_key in update.state) != (b_key in update.state) for update in updates):
                raise ValueError(f"A client sent only one of the LoRA factors {a_key!r} and {b_key!r}.")
            held = holders[a_key]
            if len(held) < 2 or a_key in robust_keys:
                continue
            b_new, a_new, _ = lora_product_mean(
                [(update.state[b_key], update.state[a_key]) for update in held],
                capped_shares([update.num_examples for update in held], max_share).tolist(),
            )
            new_state[b_key] = b_new.reshape(global_state[b_key].shape).astype(global_state[b_key].dtype)
            new_state[a_key] = a_new.reshape(global_state[a_key].shape).astype(global_state[a_key].dtype)
    for key in holders:
        if not np.all(np.isfinite(new_state[key])):
            _log.warning("The average of %r is not finite in %s; it keeps its value.", key, global_state[key].dtype)
            new_state[key] = global_state[key]
    return new_state


def capped_shares(weights: list[float] | np.ndarray, max_share: float = 1.0) -> np.ndarray:
    """Each client's share of an average, proportional to ``weights`` but none above ``max_share``.

    Shares above the cap are set to it and the rest is shared among the others in proportion to
    their weights, repeated until no share exceeds the cap (water-filling: the closest shares to
    proportional under the cap). A cap below ``1/k`` cannot hold for ``k`` clients; they then get
    ``1/k`` each. One client alone always has share 1.
    """
    weights = np.asarray(weights, dtype=np.float64)
    count = len(weights)
    if max_share * count <= 1.0:
        return np.full(count, 1.0 / count)
    shares = weights / weights.sum()
    capped = np.zeros(count, dtype=bool)
    while True:
        over = (shares > max_share) & ~capped
        if not over.any():
            return shares
        capped |= over
        free = 1.0 - max_share * capped.sum()
        rest = weights * ~capped
        shares = np.where(capped, max_share, free * rest / rest.sum())


def robust_mean(values: np.ndarray, scheme: str) -> np.ndarray:
    """The coordinate-wise ``median`` or ``trimmed-mean`` of ``values`` (clients on axis 0), unweighted.

    ``trimmed-mean`` drops the ``max(1, floor(TRIM_FRACTION * k))`` smallest and as many largest
    values of each coordinate over the ``k`` clients and averages the rest.
    """
    if scheme == "median":
        return np.median(values, axis=0)
    cut = max(1, int(TRIM_FRACTION * len(values)))
    return np.sort(values, axis=0)[cut : len(values) - cut].mean(axis=0)


def magnitude_limit(dtype: np.dtype) -> float:
    """The largest Frobenius norm a unit of ``dtype`` may have so that every average of such units,
    every LoRA product mean and its factors stay finite in ``dtype`` and in the float64 the server
    computes in: half the dtype's largest value, at most 1e150 (whose square, times any weight, is
    still finite in float64)."""
    return min(float(np.finfo(dtype).max) / 2, 1e150) if np.issubdtype(dtype, np.floating) else float("inf")


def check_magnitude(update: PartialUpdate) -> None:
    """Raise ``ValueError`` if a unit of ``update`` is finite but so large that an average of it
    could overflow (:func:`magnitude_limit`).

    Why it suffices: a weighted mean of units of norm <= L has norm <= L; for a LoRA module,
    ``||B_k A_k||_* <= ||B_k||_F ||A_k||_F <= L^2``, so the product mean's factors, whose squared
    norms are its nuclear norm, have norm <= L.
    """
    for key, value in update.state.items():
        with np.errstate(over="ignore"):
            norm = float(np.linalg.norm(value.astype(np.float64)))
        limit = magnitude_limit(value.dtype)
        if not norm <= limit:
            raise ValueError(
                f"Client {update.client} sent {key!r} with norm {norm:.3g}, above {limit:.3g}: "
                "its average could overflow."
            )


def bound_update(
    update: PartialUpdate, sent: Mapping[str, np.ndarray], layers: Iterable[Iterable[str]], max_norm: float
) -> tuple[PartialUpdate, dict[int, float]]:
    """``update`` with each layer's change clipped to ``max_norm`` times the norm of the units it was sent.

    ``layers`` are the unit keys of every layer (a :class:`~f3ocus_core.peft_units.UnitMap`'s
    ``names``); ``sent`` the units the client started from. For each layer the update holds, the
    change ``u - sent`` over all its units is scaled by ``min(1, max_norm * ||sent|| / ||u - sent||)``
    (a layer whose units are all zero is not bounded). Returns the update (the same object if
    nothing was clipped) and, per clipped layer index, the ratio ``||u - sent|| / ||sent||`` it had.
    """
    state = dict(update.state)
    clipped: dict[int, float] = {}
    for index, keys in enumerate(layers):
        keys = [key for key in keys if key in state]
        if not keys:
            continue
        deltas = {key: state[key].astype(np.float64) - sent[key].astype(np.float64) for key in keys}
        change = float(np.sqrt(sum(np.sum(delta**2) for delta in deltas.values())))
        base = float(np.sqrt(sum(np.sum(sent[key].astype(np.float64) ** 2) for key in keys)))
        if base > 0 and change > max_norm * base:
            scale = max_norm * base / change
            for key in keys:
                state[key] = (sent[key].astype(np.float64) + scale * deltas[key]).astype(sent[key].dtype)
            clipped[index] = change / base
    if not clipped:
        return update, clipped
    return PartialUpdate(update.client, state, update.num_examples), clipped


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
