"""The per-client rules the server applies around the selector: budgets, score checks, fall-back."""

import numpy as np
import pytest

from f3ocus_core.selection import check_scores, client_budgets, fallback_assignment


def test_one_budget_is_repeated_for_every_client():
    assert client_budgets((3,), [4, 0, 2]) == [3, 3, 3]


def test_a_budget_list_is_indexed_by_partition_id_not_by_arrival_order():
    assert client_budgets((1, 2, 3), [2, 0]) == [3, 1]


def test_a_partition_without_a_budget_entry_names_the_config_key():
    with pytest.raises(ValueError, match="selection.budget"):
        client_budgets((1, 2), [0, 2])


@pytest.mark.parametrize(("scores", "budget", "reason"), [
    ([0.5, 0.5], 1, "expected 3 scores"),
    ([0.5, np.nan, 0.5], 1, "NaN or inf"),
    ([0.5, np.inf, 0.5], 1, "NaN or inf"),
    ([0.5, -0.1, 0.6], 1, "negative"),
    ([0.0, 0.0, 0.0], 1, "all zero"),
    ([0.2, 0.3, 0.5], 0, "outside 1..3"),
    ([0.2, 0.3, 0.5], 4, "outside 1..3"),
])
def test_unusable_scores_are_refused_with_the_reason(scores, budget, reason):
    with pytest.raises(ValueError, match=reason):
        check_scores(np.array(scores), num_layers=3, budget=budget)


def test_usable_scores_pass():
    check_scores(np.array([0.0, 0.25, 0.75]), num_layers=3, budget=3)


def test_the_fallback_is_the_clients_own_top_b_of_its_last_valid_scores():
    last = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
    rng = np.random.default_rng(0)
    assert fallback_assignment(last, 2, 5, rng) == [1, 3]
    assert fallback_assignment(np.array([0.2, 0.2, 0.6]), 2, 3, rng) == [0, 2]  # tie to the lower index


def test_without_valid_scores_the_fallback_is_a_seeded_random_sorted_set():
    drawn = [fallback_assignment(None, 3, 10, np.random.default_rng(seed)) for seed in range(20)]
    for layers in drawn:
        assert layers == sorted(layers) and len(set(layers)) == 3 and all(0 <= l < 10 for l in layers)
    assert drawn[0] == fallback_assignment(None, 3, 10, np.random.default_rng(0))
    assert len({tuple(layers) for layers in drawn}) > 1
    expected = sorted(np.random.default_rng(7).choice(10, size=3, replace=False).tolist())
    assert fallback_assignment(None, 3, 10, np.random.default_rng(7)) == expected
