"""The secure-sum prototype (f3ocus_flower/secure_sum.py, issue 22 item 3): clients with different
layers get each layer's sum, a dropped client's masks are recovered from the survivors' shares, and
the server's view of one client's reply is uniformly masked."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from f3ocus_flower.secure_sum import SecureSumClient, SecureSumParams, union_layout, unmask_sum

LAYERS = (("l0.a", "l0.b"), ("l1.a",), ("l2.a",), ("l3.a",))
SHAPES = {"l0.a": (3, 2), "l0.b": (4,), "l1.a": (5,), "l2.a": (2, 2), "l3.a": (7,)}
ASSIGNMENT = {1: [0, 1], 2: [1, 2], 3: [0, 2], 4: [1]}  # nobody trains layer 3
PARAMS = SecureSumParams(clipping_range=1.0, threshold=2)


def _changes(rng) -> dict[int, dict[str, np.ndarray]]:
    return {
        node: {key: rng.uniform(-0.5, 0.5, SHAPES[key]) for layer in layers for key in LAYERS[layer]}
        for node, layers in ASSIGNMENT.items()
    }


def _round(drop: set[int], rng):
    changes = _changes(rng)
    clients = {node: SecureSumClient(node) for node in ASSIGNMENT}
    publics = {node: client.public for node, client in clients.items()}
    for node, client in clients.items():
        for peer, ciphertext in client.share(publics, PARAMS.threshold).items():
            clients[peer].receive(node, ciphertext, publics)
    layout = union_layout(LAYERS, ASSIGNMENT, SHAPES)
    survivors = [node for node in clients if node not in drop]
    masked = {node: clients[node].masked(changes[node], layout, publics, PARAMS) for node in survivors}
    revealed = [clients[node].reveal(survivors) for node in survivors]
    return changes, masked, unmask_sum(masked, revealed, publics, layout, PARAMS), layout


@pytest.mark.parametrize("drop", [set(), {3}])
def test_the_server_gets_each_layers_sum_over_its_trainers_even_when_one_drops(drop):
    changes, _, sums, layout = _round(drop, np.random.default_rng(0))

    assert [key for key, _ in layout] == ["l0.a", "l0.b", "l1.a", "l2.a"]
    step = 2 * PARAMS.clipping_range / PARAMS.target_range
    for key in sums:
        expected = sum(change[key] for node, change in changes.items() if node not in drop and key in change)
        np.testing.assert_allclose(sums[key], expected, atol=len(ASSIGNMENT) * step)


def test_too_many_dropped_clients_stop_the_unmasking_with_a_reason():
    with pytest.raises(RuntimeError, match="shares"):
        _round({1, 2, 3}, np.random.default_rng(1))


def test_one_clients_masked_reply_is_uniform_whatever_its_change():
    _, masked, _, _ = _round(set(), np.random.default_rng(2))
    values = np.concatenate([v.ravel() for v in masked[1]])
    big = np.concatenate(
        [values]
        + [np.concatenate([v.ravel() for v in _round(set(), np.random.default_rng(s))[1][1]]) for s in range(3, 30)]
    )
    counts, _ = np.histogram(big, bins=8, range=(0, PARAMS.mod_range))
    assert chisquare(counts).pvalue > 1e-3  # no bin stands out: the change (near the middle of the range) is hidden
    assert values.min() >= 0 and values.max() < PARAMS.mod_range
