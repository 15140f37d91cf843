"""Layer-wise aggregation: hand-computed means, untouched layers bit-identical, bad updates refused;
LoRA factors averaged as the mean of their products or separately."""

import numpy as np
import pytest

from f3ocus_core.aggregation import (
    LORA_SCHEMES,
    PartialUpdate,
    aggregate_layers,
    coverage,
    lora_pairs,
    lora_product_mean,
    validate_update,
)
from f3ocus_core.config import ConfigError, parse_run_config


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((2, 3)).astype(np.float32) for name in ("l0.a", "l0.b", "l1.a", "l2.a")}


def test_each_layer_is_the_example_weighted_mean_of_its_trainers():
    state = _global()
    one = {"l0.a": np.full((2, 3), 1.0, np.float32), "l0.b": np.full((2, 3), 2.0, np.float32)}
    two = {
        "l0.a": np.full((2, 3), 4.0, np.float32),
        "l0.b": np.full((2, 3), 8.0, np.float32),
        "l1.a": np.full((2, 3), -3.0, np.float32),
    }
    new = aggregate_layers(state, [PartialUpdate("c1", one, 10), PartialUpdate("c2", two, 30)])
    np.testing.assert_allclose(new["l0.a"], (1.0 * 10 + 4.0 * 30) / 40)
    np.testing.assert_allclose(new["l0.b"], (2.0 * 10 + 8.0 * 30) / 40)
    np.testing.assert_allclose(new["l1.a"], -3.0)
    assert new["l0.a"].dtype == np.float32


def test_layers_nobody_trained_are_bit_identical():
    state = _global()
    update = PartialUpdate("c1", {"l0.a": np.zeros((2, 3), np.float32)}, 5)
    new = aggregate_layers(state, [update])
    for key in ("l0.b", "l1.a", "l2.a"):
        assert new[key].tobytes() == state[key].tobytes()
    assert not np.array_equal(new["l0.a"], state["l0.a"])


@pytest.mark.parametrize(
    "state, expected, message",
    [
        ({"l0.a": np.zeros((2, 3), np.float32)}, ["l0.a", "l0.b"], "missing"),
        ({"l0.a": np.zeros((2, 3), np.float32), "l1.a": np.zeros((2, 3), np.float32)}, ["l0.a"], "unexpected"),
        ({"l0.a": np.zeros((3, 2), np.float32)}, ["l0.a"], "expected float32"),
        ({"l0.a": np.zeros((2, 3), np.float64)}, ["l0.a"], "expected float32"),
        ({"l0.a": np.full((2, 3), np.nan, np.float32)}, ["l0.a"], "non-finite"),
    ],
)
def test_updates_that_do_not_match_the_assignment_are_refused(state, expected, message):
    with pytest.raises(ValueError, match=message):
        validate_update(PartialUpdate("c9", state, 3), expected, _global())


def test_update_without_examples_is_refused():
    with pytest.raises(ValueError, match="training examples"):
        validate_update(PartialUpdate("c9", {"l0.a": np.zeros((2, 3), np.float32)}, 0), ["l0.a"], _global())


def test_coverage_counts_trainers_per_layer():
    assert coverage([[0, 2], [2, 3], [2]], 5).tolist() == [1, 0, 3, 1, 0]


A0 = "model.layer.0.attention.query.lora_A.default.weight"
B0 = "model.layer.0.attention.query.lora_B.default.weight"
A1 = "model.layer.1.attention.query.lora_A.default.weight"
B1 = "model.layer.1.attention.query.lora_B.default.weight"


def _lora_global(rank: int = 2, out: int = 4, inp: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    state = {}
    for a, b in ((A0, B0), (A1, B1)):
        state[a] = rng.standard_normal((rank, inp)).astype(np.float32)
        state[b] = rng.standard_normal((out, rank)).astype(np.float32)
    state["model.layer.0.output.LayerNorm.weight"] = np.ones(out, np.float32)
    return state


def test_lora_pairs_come_from_peft_names():
    keys = [A0, B0, A1, "model.layer.0.output.LayerNorm.weight"]
    assert lora_pairs(keys) == {A0: B0}


def test_product_is_the_exact_mean_of_products_for_two_clients_hand_computed():
    # Rank 1, so each product is an outer product; the two products share the column space of
    # B = (1, 0), so their mean has rank 1 and the truncation to rank 1 is lossless.
    one = {A0: np.array([[1.0, 2.0]], np.float32), B0: np.array([[2.0], [0.0]], np.float32)}
    two = {A0: np.array([[3.0, -1.0]], np.float32), B0: np.array([[1.0], [0.0]], np.float32)}
    state = {A0: np.zeros((1, 2), np.float32), B0: np.zeros((2, 1), np.float32)}
    # (10 * [[2, 4], [0, 0]] + 30 * [[3, -1], [0, 0]]) / 40 = [[2.75, 0.25], [0, 0]]
    expected = np.array([[2.75, 0.25], [0.0, 0.0]])
    new = aggregate_layers(state, [PartialUpdate("c1", one, 10), PartialUpdate("c2", two, 30)], lora="product")
    np.testing.assert_allclose(new[B0].astype(np.float64) @ new[A0], expected, atol=1e-6)
    separate = aggregate_layers(state, [PartialUpdate("c1", one, 10), PartialUpdate("c2", two, 30)], lora="separate")
    # mean(B) mean(A) = [[1.25], [0]] [[2.5, -0.25]] = [[3.125, -0.3125], [0, 0]]: biased.
    np.testing.assert_allclose(separate[B0] @ separate[A0], [[3.125, -0.3125], [0.0, 0.0]], atol=1e-6)
    # The product scheme splits evenly: B' = U sqrt(S), A' = sqrt(S) V^T.
    np.testing.assert_allclose(np.linalg.norm(new[B0]), np.linalg.norm(new[A0]), rtol=1e-6)


def test_rank_r_mean_of_products_is_reproduced_when_clients_share_the_column_space_of_b():
    rng = np.random.default_rng(3)
    rank, out, inp = 3, 10, 7
    basis = rng.standard_normal((out, rank))
    factors = [(basis @ rng.standard_normal((rank, rank)), rng.standard_normal((rank, inp))) for _ in range(4)]
    weights = [5.0, 1.0, 7.0, 2.0]
    exact = sum(w * b @ a for (b, a), w in zip(factors, weights)) / sum(weights)
    b_new, a_new, error = lora_product_mean(factors, weights)
    assert b_new.shape == (out, rank) and a_new.shape == (rank, inp)
    np.testing.assert_allclose(b_new @ a_new, exact, atol=1e-10)
    assert error < 1e-12


def test_the_product_factors_do_not_depend_on_the_order_of_the_clients():
    # An SVD fixes each singular pair only up to sign; without a sign convention, reordering the
    # clients flips some columns of B' (and rows of A'), and a resumed run would not repeat its
    # uninterrupted twin.
    from itertools import permutations

    rng = np.random.default_rng(5)
    factors = [(rng.standard_normal((12, 3)), rng.standard_normal((3, 9))) for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    reference_b, reference_a, _ = lora_product_mean(factors, weights)
    for order in permutations(range(3)):
        b_new, a_new, _ = lora_product_mean([factors[i] for i in order], [weights[i] for i in order])
        np.testing.assert_allclose(b_new, reference_b, atol=1e-10)
        np.testing.assert_allclose(a_new, reference_a, atol=1e-10)
    assert np.all(reference_b[np.argmax(np.abs(reference_b), axis=0), np.arange(3)] > 0)


def test_truncation_error_is_reported_and_is_the_best_rank_r_error():
    rng = np.random.default_rng(4)
    factors = [(rng.standard_normal((12, 2)), rng.standard_normal((2, 9))) for _ in range(3)]
    b_new, a_new, error = lora_product_mean(factors, [1.0, 2.0, 3.0])
    exact = sum(w * b @ a for (b, a), w in zip(factors, [1.0, 2.0, 3.0])) / 6.0
    singular = np.linalg.svd(exact, compute_uv=False)
    assert np.linalg.matrix_rank(exact) == 6  # k * r: the mean of rank-2 products exceeds rank 2
    best = np.sqrt(np.sum(singular[2:] ** 2)) / np.linalg.norm(exact)
    assert error == pytest.approx(best, rel=1e-9)
    assert np.linalg.norm(b_new @ a_new - exact) / np.linalg.norm(exact) == pytest.approx(best, rel=1e-9)
    mean_b = sum(w * b for (b, _), w in zip(factors, [1, 2, 3])) / 6
    mean_a = sum(w * a for (_, a), w in zip(factors, [1, 2, 3])) / 6
    separate = mean_b @ mean_a
    assert np.linalg.norm(separate - exact) / np.linalg.norm(exact) > best  # Eckart-Young


@pytest.mark.parametrize("scheme", LORA_SCHEMES)
def test_a_module_trained_by_one_client_and_untouched_layers_are_bit_identical(scheme):
    state = _lora_global()
    rng = np.random.default_rng(5)
    only = {
        A0: rng.standard_normal(state[A0].shape).astype(np.float32),
        B0: rng.standard_normal(state[B0].shape).astype(np.float32),
    }
    other = {
        A1: rng.standard_normal(state[A1].shape).astype(np.float32),
        B1: rng.standard_normal(state[B1].shape).astype(np.float32),
    }
    both = {
        A1: rng.standard_normal(state[A1].shape).astype(np.float32),
        B1: rng.standard_normal(state[B1].shape).astype(np.float32),
    }
    new = aggregate_layers(state, [PartialUpdate("c1", only | other, 7), PartialUpdate("c2", both, 13)], lora=scheme)
    for key in (A0, B0):
        assert new[key].tobytes() == only[key].tobytes()
    key = "model.layer.0.output.LayerNorm.weight"
    assert new[key] is state[key]
    assert new[A1].dtype == np.float32 and new[A1].shape == state[A1].shape
    assert not np.array_equal(new[A1], other[A1]) and not np.array_equal(new[A1], both[A1])


def test_the_schemes_differ_only_on_shared_lora_modules():
    state = _lora_global()
    rng = np.random.default_rng(6)
    updates = [
        PartialUpdate(f"c{i}", {k: rng.standard_normal(state[k].shape).astype(np.float32) for k in (A1, B1)}, 3 + i)
        for i in range(2)
    ]
    product = aggregate_layers(state, updates, lora="product")
    separate = aggregate_layers(state, updates, lora="separate")
    exact = sum(u.num_examples * u.state[B1].astype(np.float64) @ u.state[A1] for u in updates) / 7

    # Two rank-2 products of a 4 x 3 matrix: the mean has rank <= 3 > 2, so neither is exact, but
    # the product scheme is the best rank-2 answer and so never worse than separate.
    def err(s):
        return np.linalg.norm(s[B1].astype(np.float64) @ s[A1] - exact)

    assert err(product) <= err(separate) + 1e-6
    assert not np.allclose(product[A1], separate[A1])


def test_unknown_scheme_and_half_pairs_are_refused():
    state = _lora_global()
    with pytest.raises(ValueError, match="aggregation.lora"):
        aggregate_layers(state, [], lora="mean")
    halves = [PartialUpdate("c1", {A0: state[A0], B0: state[B0]}, 1), PartialUpdate("c2", {A0: state[A0]}, 1)]
    with pytest.raises(ValueError, match="only one of the LoRA factors"):
        aggregate_layers(state, halves, lora="product")


def test_aggregation_lora_key_is_parsed_and_checked():
    from f3ocus_core.importance import SCORERS
    from f3ocus_core.selection import ALGORITHMS

    assert parse_run_config({}, SCORERS, ALGORITHMS).aggregation_lora == "product"
    assert parse_run_config({"aggregation.lora": "separate"}, SCORERS, ALGORITHMS).aggregation_lora == "separate"
    with pytest.raises(ConfigError, match="^aggregation.lora"):
        parse_run_config({"aggregation.lora": "mean"}, SCORERS, ALGORITHMS)
