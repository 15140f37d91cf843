"""Per-client decisions around the selector: budgets from ``selection.budget``, score checks, fall-backs."""

import numpy as np
import pytest

from f3ocus_core.selection import check_scores, client_budgets, fallback_assignment


def test_one_budget_is_repeated_for_every_client():
    assert client_budgets((3,), [2, 0, 5]) == [3, 3, 3]
    assert client_budgets((3,), []) == []


def test_a_budget_list_is_indexed_by_partition_id():
    assert client_budgets((4, 2, 2, 4), [3, 1, 0]) == [4, 2, 4]


@pytest.mark.parametrize("partition_ids", [[0, 4], [-1]])
def test_a_budget_list_without_an_entry_for_a_client_names_the_key(partition_ids):
    with pytest.raises(ValueError, match=r"^selection\.budget: 4 budgets given"):
        client_budgets((4, 2, 2, 4), partition_ids)


def test_check_scores_returns_floats():
    clean = check_scores([0.5, 0, 2], num_layers=3, budget=2)
    assert clean.dtype == np.float64 and clean.tolist() == [0.5, 0.0, 2.0]


@pytest.mark.parametrize(
    ("scores", "budget", "reason"),
    [
        ([0.1, np.nan, 0.2], 1, r"layers \[1\] are NaN or inf"),
        ([np.inf, 0.1, 0.2], 1, r"layers \[0\] are NaN or inf"),
        ([0.1, -0.5, 0.2], 1, r"layers \[1\] are negative"),
        ([0.1, 0.2], 1, "expected 3 scores"),
        ([[0.1, 0.2, 0.3]], 1, "vector of 3 scores"),
        ([0.0, 0.0, 0.0], 1, "all scores are zero"),
        (["a", "b", "c"], 1, "real numbers"),
        ([0.1, 0.2, 0.3], 4, r"budget 4 is outside 1\.\.3"),
    ],
)
def test_check_scores_says_why_scores_are_unusable(scores, budget, reason):
    with pytest.raises(ValueError, match=reason):
        check_scores(np.asarray(scores), num_layers=3, budget=budget)


def test_fallback_is_the_top_b_of_the_last_valid_scores():
    rng = np.random.default_rng(0)
    assert fallback_assignment(np.array([0.1, 0.4, 0.2, 0.4]), 2, 4, rng) == [1, 3]


def test_fallback_without_valid_scores_is_a_seeded_random_set():
    draws = [fallback_assignment(None, 3, 10, np.random.default_rng(seed)) for seed in (5, 5, 6)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    for layers in draws:
        assert len(set(layers)) == 3 and layers == sorted(layers) and all(0 <= l < 10 for l in layers)


def test_fallback_rejects_scores_of_another_model():
    with pytest.raises(ValueError, match="expected 4"):
        fallback_assignment(np.ones(5), 2, 4, np.random.default_rng(0))
