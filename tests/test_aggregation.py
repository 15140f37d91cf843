"""Layer-wise aggregation: hand-computed means, untouched layers bit-identical, bad updates refused."""

import numpy as np
import pytest

from f3ocus_core.aggregation import PartialUpdate, aggregate_layers, coverage, validate_update


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((2, 3)).astype(np.float32) for name in ("l0.a", "l0.b", "l1.a", "l2.a")}


def test_each_layer_is_the_example_weighted_mean_of_its_trainers():
    state = _global()
    one = {"l0.a": np.full((2, 3), 1.0, np.float32), "l0.b": np.full((2, 3), 2.0, np.float32)}
    two = {"l0.a": np.full((2, 3), 4.0, np.float32), "l0.b": np.full((2, 3), 8.0, np.float32),
           "l1.a": np.full((2, 3), -3.0, np.float32)}
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
