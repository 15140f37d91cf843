"""Secure summation of partial updates built from Flower's SecAgg+ primitives: the protocol's
arithmetic, which ``secagg=true`` runs as extra exchanges of the round (:mod:`server_app.secagg`,
:mod:`client_app.secagg`; docs/privacy.md says why Flower's own workflow cannot serve here).

Flower's ``SecAggPlusWorkflow`` drives a legacy ``flwr.server.strategy.Strategy`` through a
``LegacyContext`` and masks vectors of the shape of each client's own reply, so it cannot sum
replies that hold different layers. Here every client of a round masks a vector over the **union
of the units assigned that round** (its own changes, zeros elsewhere), so the pairwise masks cancel
in the sum and the server learns each layer's sum over the clients that trained it (the count per
layer is the public assignment), not any client's units.

The primitives are Flower's: ECDH key agreement and HKDF (``generate_key_pairs``,
``generate_shared_key``), Fernet encryption of the shares between clients (``encrypt``,
``decrypt``), Shamir secret sharing (``create_shares``, ``combine_shares``), stochastic
quantisation (``quantize``, ``dequantize``) and the seeded mask generator (``pseudo_rand_gen``).
The steps follow SecAgg (every client is every other's neighbour; SecAgg+'s sparse graph is not
built): keys, shares of the private-mask seed and of the pairwise secret key, masked vectors,
unmasking with the survivors' seeds and the dropped clients' pairwise keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)


@dataclass(frozen=True)
class SecureSumParams:
    """Quantisation and ring: values are clipped to ``[-clipping_range, clipping_range]`` (with
    ``dp.clip-norm`` C every coordinate of a clipped change already is, for ``clipping_range = C``),
    quantised to ``0..target_range`` and summed modulo ``mod_range`` (which must exceed
    ``clients * target_range``)."""

    clipping_range: float
    target_range: int = 1 << 20
    mod_range: int = 1 << 40
    threshold: int = 2


def threshold_for(clients: int) -> int:
    """Shares needed to rebuild a secret among ``clients`` (those that sent keys): a majority, at
    least 2. The unmasking then survives ``clients - threshold`` drops, and no minority of clients
    colluding with the server can rebuild anyone's secrets."""
    return max(2, clients // 2 + 1)


Layout = list[tuple[str, tuple[int, ...]]]


def union_layout(
    layer_keys: Sequence[Sequence[str]], assignment: Mapping[int, Sequence[int]], shapes: Mapping[str, tuple[int, ...]]
) -> Layout:
    """The (key, shape) of every unit of a layer assigned to at least one client, in layer order."""
    assigned = sorted({layer for layers in assignment.values() for layer in layers})
    return [(key, tuple(shapes[key])) for layer in assigned for key in layer_keys[layer]]


@dataclass
class SecureSumClient:
    """One client's side: its key pairs, its private-mask seed, and the shares it holds for others.

    ``secret_keys`` (the two private keys as bytes, :attr:`secret_keys`) restores a client kept
    between messages; None draws new key pairs."""

    node: int
    seed: bytes = field(default_factory=lambda: os.urandom(32))
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    secret_keys: tuple[bytes, bytes] | None = None

    def __post_init__(self) -> None:
        if self.secret_keys is None:
            self._sk1 = generate_key_pairs()[0]  # pairwise masks
            self._sk2 = generate_key_pairs()[0]  # encrypting shares to peers
            self.secret_keys = (private_key_to_bytes(self._sk1), private_key_to_bytes(self._sk2))
        else:
            self._sk1, self._sk2 = (bytes_to_private_key(key) for key in self.secret_keys)
        self.public = (public_key_to_bytes(self._sk1.public_key()), public_key_to_bytes(self._sk2.public_key()))

    def share(self, publics: Mapping[int, tuple[bytes, bytes]], threshold: int) -> dict[int, bytes]:
        """Shamir shares of the seed and of the pairwise secret key, one per peer, each encrypted
        to that peer (the server relays them and cannot read them)."""
        peers = sorted(publics)
        seed_shares = create_shares(self.seed, threshold, len(peers))
        key_shares = create_shares(private_key_to_bytes(self._sk1), threshold, len(peers))
        out = {}
        for peer, seed_share, key_share in zip(peers, seed_shares, key_shares):
            key = generate_shared_key(self._sk2, bytes_to_public_key(publics[peer][1]))
            out[peer] = encrypt(key, len(seed_share).to_bytes(4, "little") + seed_share + key_share)
        return out

    def receive(self, sender: int, ciphertext: bytes, publics: Mapping[int, tuple[bytes, bytes]]) -> None:
        """Decrypt and keep the shares ``sender`` made for this client."""
        key = generate_shared_key(self._sk2, bytes_to_public_key(publics[sender][1]))
        plain = decrypt(key, ciphertext)
        size = int.from_bytes(plain[:4], "little")
        self.held[sender] = (plain[4 : 4 + size], plain[4 + size :])

    def masked(
        self,
        change: Mapping[str, np.ndarray],
        layout: Layout,
        publics: Mapping[int, tuple[bytes, bytes]],
        params: SecureSumParams,
    ) -> list[np.ndarray]:
        """The client's change over ``layout`` (zeros on units it did not train), quantised, plus its
        private mask and, per peer, ``+`` or ``-`` their pairwise mask, modulo ``mod_range``."""
        values = [
            np.asarray(change[key], dtype=np.float64) if key in change else np.zeros(shape) for key, shape in layout
        ]
        vector = [q.astype(np.int64) for q in quantize(values, params.clipping_range, params.target_range)]
        shapes = [shape for _, shape in layout]
        masks = [pseudo_rand_gen(self.seed, params.mod_range, shapes)]
        signs = [1]
        for peer in sorted(publics):
            if peer == self.node:
                continue
            shared = generate_shared_key(self._sk1, bytes_to_public_key(publics[peer][0]))
            masks.append(pseudo_rand_gen(shared, params.mod_range, shapes))
            signs.append(1 if self.node > peer else -1)
        for mask, sign in zip(masks, signs):
            vector = [v + sign * m for v, m in zip(vector, mask)]
        return [np.mod(v, params.mod_range) for v in vector]

    def reveal(self, survivors: Sequence[int]) -> dict[int, bytes]:
        """For the unmasking step: the seed share of each survivor and the key share of each dropped
        client (never both for one client, which would let the server unmask it)."""
        return {owner: (seed if owner in survivors else key) for owner, (seed, key) in self.held.items()}


def unmask_sum(
    masked: Mapping[int, list[np.ndarray]],
    revealed: Sequence[Mapping[int, bytes]],
    publics: Mapping[int, tuple[bytes, bytes]],
    layout: Layout,
    params: SecureSumParams,
) -> dict[str, np.ndarray]:
    """The server's side: the sum of the survivors' changes per unit of ``layout``.

    ``masked`` holds the survivors' masked vectors; ``revealed`` the shares the survivors revealed
    (:meth:`SecureSumClient.reveal`); ``publics`` every client that sent keys, dropped ones included.
    """
    survivors = sorted(masked)
    shapes = [shape for _, shape in layout]
    total = [np.sum([masked[node][i] for node in survivors], axis=0) for i in range(len(layout))]
    for owner in sorted(publics):
        shares = [reveal[owner] for reveal in revealed if owner in reveal]
        if len(shares) < params.threshold:
            raise RuntimeError(
                f"Only {len(shares)} shares of client {owner}'s secret, {params.threshold} needed: "
                "too many clients dropped to unmask the sum."
            )
        secret = combine_shares(shares)
        if owner in survivors:
            total = [t - m for t, m in zip(total, pseudo_rand_gen(secret, params.mod_range, shapes))]
            continue
        dropped_key = bytes_to_private_key(secret)
        for peer in survivors:  # the dropped client's pairwise masks are in every survivor's vector
            shared = generate_shared_key(dropped_key, bytes_to_public_key(publics[peer][0]))
            mask = pseudo_rand_gen(shared, params.mod_range, shapes)
            sign = 1 if peer > owner else -1  # the sign the survivor used for this pair
            total = [t - sign * m for t, m in zip(total, mask)]
    total = [np.mod(t, params.mod_range) for t in total]
    sums = dequantize(total, params.clipping_range, params.target_range)
    offset = (len(survivors) - 1) * params.clipping_range
    return {key: value - offset for (key, _), value in zip(layout, sums)}
