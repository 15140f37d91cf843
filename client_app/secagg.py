"""The client's side of secure aggregation (``secagg=true``): its ``train`` reply carries public keys
instead of units, and three more ``train`` messages (SECAGG_STAGE ``share-keys``, ``masked-input``,
``unmask``; :mod:`f3ocus_flower.protocol`) run the steps of :mod:`f3ocus_flower.secure_sum`.

Between messages the client keeps, in ``context.state`` (a RecordDict that lasts the run, on a
SuperNode as here): its clipped change (:data:`CHANGE`), and its secrets and progress
(:data:`SECRETS`: the round, the stage done, the private-mask seed and private keys, then every key
holder's public keys, then the shares it holds). Each stage checks that it follows the one before in
the same round, and both are deleted once it has answered ``unmask``, so no share is revealed twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from f3ocus_flower.protocol import (
    ARRAYS,
    CIPHERTEXTS,
    CONFIG,
    LAYOUT,
    MASKED_INPUT,
    NODES,
    PUBLIC_KEYS,
    SECAGG,
    SECAGG_STAGE,
    SERVER_ROUND,
    SHARE_KEYS,
    SHARES,
    SURVIVORS,
    UNMASK,
    bytes_list,
    bytes_of,
    record_to_state,
    scalar,
    scalar_list,
    state_to_record,
)
from f3ocus_flower.secure_sum import SecureSumClient, SecureSumParams, threshold_for

# Keys of context.state.
CHANGE = "secagg-change"
SECRETS = "secagg"

# The stage each stage must follow.
_AFTER = {SHARE_KEYS: "train", MASKED_INPUT: SHARE_KEYS, UNMASK: MASKED_INPUT}


def keep_change(
    state: RecordDict, node: int, server_round: int, trained: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]
) -> ConfigRecord:
    """After ``train``: keep the change ``trained - sent`` (already clipped) and fresh secrets in
    ``state``; return the reply's SECAGG record, the client's two public keys."""
    client = SecureSumClient(node)
    assert client.secret_keys is not None, "a new SecureSumClient draws its key pairs"
    state[CHANGE] = state_to_record(
        {key: value.astype(np.float64) - sent[key].astype(np.float64) for key, value in trained.items()}
    )
    state[SECRETS] = ConfigRecord(
        {
            SERVER_ROUND: server_round,
            SECAGG_STAGE: "train",
            "node": node,
            "seed": client.seed,
            "keys": list(client.secret_keys),
        }
    )
    return ConfigRecord(dict(zip(PUBLIC_KEYS, client.public)))


def answer_stage(
    content: RecordDict, state: RecordDict, clip_norm: float, shapes: Mapping[str, tuple[int, ...]]
) -> RecordDict:
    """The reply to one secure-aggregation stage; ``shapes`` are the shapes of all units (the global
    units the client holds), ``clip_norm`` the quantisation range (``dp.clip-norm``).

    Raises
    ------
    RuntimeError
        If the stage does not follow the one this client answered last in this round (a restarted
        client, a replayed message), or if the server's request breaks the protocol (a public key
        that is not this client's, fewer clients than the threshold, a layout without its units).
    """
    config = content.config_records[CONFIG]
    stage, server_round = str(config[SECAGG_STAGE]), int(scalar(config[SERVER_ROUND]))
    if SECRETS not in state.config_records:
        raise RuntimeError(
            f"secagg {stage}: this client holds no secrets of round {server_round} (it restarted "
            "since its train reply); it takes part again from the next round."
        )
    kept = state.config_records[SECRETS]
    last_stage, last_round = str(kept[SECAGG_STAGE]), int(scalar(kept[SERVER_ROUND]))
    if stage not in _AFTER or last_round != server_round or last_stage != _AFTER[stage]:
        raise RuntimeError(
            f"secagg {stage} of round {server_round}: this client's last step was "
            f"{last_stage} of round {last_round}; stages run in order, once."
        )
    mask_key, share_key = bytes_list(kept["keys"])
    client = SecureSumClient(int(scalar(kept["node"])), bytes_of(kept["seed"]), _held(kept), (mask_key, share_key))
    request = content.config_records[SECAGG]
    if stage == SHARE_KEYS:
        reply = _share_keys(client, request, kept)
    elif stage == MASKED_INPUT:
        reply = _masked_input(client, request, kept, record_to_state(state.array_records[CHANGE]), clip_norm, shapes)
    else:
        reply = _unmask(client, request, kept)
        del state[SECRETS]
        del state[CHANGE]
        return reply
    kept[SECAGG_STAGE] = stage
    return reply


def _share_keys(client: SecureSumClient, request: ConfigRecord, kept: ConfigRecord) -> RecordDict:
    """Shamir shares of the seed and of the pairwise private key for every key holder, each encrypted
    to it; the key holders and their public keys are kept for the masking."""
    nodes = [int(node) for node in scalar_list(request[NODES])]
    publics = _publics(nodes, bytes_list(request[PUBLIC_KEYS[0]]), bytes_list(request[PUBLIC_KEYS[1]]))
    if publics.get(client.node) != client.public:
        raise RuntimeError("secagg share-keys: the server did not relay this client's own public keys.")
    if len(publics) < 2:
        raise RuntimeError(f"secagg share-keys: {len(publics)} key holder; secure aggregation needs at least 2.")
    ciphertexts = client.share(publics, threshold_for(len(publics)))
    kept[NODES] = nodes
    kept[PUBLIC_KEYS[0]] = [publics[node][0] for node in nodes]
    kept[PUBLIC_KEYS[1]] = [publics[node][1] for node in nodes]
    return RecordDict({SECAGG: ConfigRecord({NODES: nodes, CIPHERTEXTS: [ciphertexts[node] for node in nodes]})})


def _masked_input(
    client: SecureSumClient,
    request: ConfigRecord,
    kept: ConfigRecord,
    change: dict[str, np.ndarray],
    clip_norm: float,
    shapes: Mapping[str, tuple[int, ...]],
) -> RecordDict:
    """Decrypt the shares the other clients made for this one, then mask the change over the layout
    with the private mask and a pairwise mask per client that shared (SecAgg's U2)."""
    holders = [int(node) for node in scalar_list(kept[NODES])]
    publics = _publics(holders, bytes_list(kept[PUBLIC_KEYS[0]]), bytes_list(kept[PUBLIC_KEYS[1]]))
    senders = [int(node) for node in scalar_list(request[NODES])]
    threshold = threshold_for(len(holders))
    if not set(senders) <= set(holders) or client.node not in senders or len(set(senders)) < threshold:
        raise RuntimeError(
            f"secagg masked-input: the clients that shared ({len(set(senders))}) must include this "
            f"one, be key holders and number at least {threshold}."
        )
    for sender, ciphertext in zip(senders, bytes_list(request[CIPHERTEXTS]), strict=True):
        client.receive(sender, ciphertext, publics)
    layout_keys = [str(key) for key in scalar_list(request[LAYOUT])]
    missing = sorted(set(change) - set(layout_keys))
    if missing or any(key not in shapes for key in layout_keys):
        raise RuntimeError(
            f"secagg masked-input: the layout leaves out units this client trained ({missing[:2]}) "
            "or names units it does not hold."
        )
    layout = [(key, tuple(shapes[key])) for key in layout_keys]
    params = SecureSumParams(clipping_range=clip_norm, threshold=threshold)
    masked = client.masked(change, layout, {node: publics[node] for node in senders}, params)
    kept["held-nodes"] = list(client.held)
    kept["held-seeds"] = [seed for seed, _ in client.held.values()]
    kept["held-keys"] = [key for _, key in client.held.values()]
    return RecordDict({ARRAYS: state_to_record({key: value for (key, _), value in zip(layout, masked)})})


def _unmask(client: SecureSumClient, request: ConfigRecord, kept: ConfigRecord) -> RecordDict:
    """The seed share of every client whose masked vector came (``survivors``) and the key share of
    every other client that shared: never both for one client."""
    survivors = [int(node) for node in scalar_list(request[SURVIVORS])]
    threshold = threshold_for(len(scalar_list(kept[NODES])))
    if not set(survivors) <= set(client.held) or len(set(survivors)) < threshold:
        raise RuntimeError(
            f"secagg unmask: the survivors ({len(set(survivors))}) must have shared with this client "
            f"and number at least {threshold}."
        )
    revealed = client.reveal(survivors)
    owners = sorted(revealed)
    return RecordDict({SECAGG: ConfigRecord({NODES: owners, SHARES: [revealed[owner] for owner in owners]})})


def _publics(
    nodes: Sequence[int], mask_keys: Sequence[bytes], share_keys: Sequence[bytes]
) -> dict[int, tuple[bytes, bytes]]:
    """Per node, its two public keys (lists in the order of ``nodes``)."""
    if len(set(nodes)) != len(nodes):
        raise RuntimeError("secagg: a node is named twice among the key holders.")
    return {node: (bytes(mask), bytes(share)) for node, mask, share in zip(nodes, mask_keys, share_keys, strict=True)}


def _held(kept: ConfigRecord) -> dict[int, tuple[bytes, bytes]]:
    """The shares kept from the masked-input stage (none before it)."""
    if "held-nodes" not in kept:
        return {}
    nodes = [int(node) for node in scalar_list(kept["held-nodes"])]
    seeds, keys = bytes_list(kept["held-seeds"]), bytes_list(kept["held-keys"])
    return {node: (seed, key) for node, seed, key in zip(nodes, seeds, keys, strict=True)}


def uses_secagg(content: RecordDict) -> bool:
    """Whether a ``train`` message is a secure-aggregation stage (not the training itself)."""
    return SECAGG_STAGE in content.config_records[CONFIG]
