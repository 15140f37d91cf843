"""The selection problem, its inputs, the front utilities and the select() entry point."""

import json

import numpy as np
import pytest

from f3ocus_core.selection import (
    ALGORITHMS,
    PICK_RULES,
    Problem,
    SelectionResult,
    coverage_variance,
    fair_reference,
    hypervolume,
    nondominated,
    pareto_optimal,
    pick_point,
    select,
    top_b_masks,
    validate_problem,
)
from f3ocus_core.selection.front import _upper_hull
from f3ocus_core.selection.synthetic import BUDGET_CASES, case_budgets, lntk_like_scores


@pytest.fixture()
def scores() -> np.ndarray:
    return lntk_like_scores(6, 10, seed=3)


# --- validate_problem --------------------------------------------------------------------------


def test_validate_accepts_and_normalises_types(scores):
    clean, budgets = validate_problem(scores.astype(np.float32), 3)
    assert clean.dtype == np.float64 and budgets.dtype == np.int64
    assert budgets.tolist() == [3] * 6
    _, budgets = validate_problem(scores, [1, 2, 3, 4, 5, 10])
    assert budgets.tolist() == [1, 2, 3, 4, 5, 10]
    _, budgets = validate_problem(scores, np.array([2.0] * 6))
    assert budgets.tolist() == [2] * 6


@pytest.mark.parametrize(
    ("bad_scores", "message"),
    [
        (np.array([[0.1, np.nan, 0.2]]), "NaN or inf"),
        (np.array([[0.1, np.inf, 0.2]]), "NaN or inf"),
        (np.array([[0.1, -0.5, 0.2]]), "non-negative"),
        (np.array([0.1, 0.2, 0.3]), "2-D"),
        (np.zeros((2, 3, 4)), "2-D"),
        (np.zeros((0, 4)), "at least one client"),
        (np.zeros((3, 0)), "at least one client"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_validate_rejects_bad_scores(bad_scores, message):
    with pytest.raises(ValueError, match=message):
        validate_problem(bad_scores, 1)


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        (0, r"1\.\.10"),
        (11, r"1\.\.10"),
        ([1, 2, 3], "list of 6 integers"),
        ([[1] * 6], "list of 6 integers"),
        (2.5, "whole numbers"),
        ([1, 2, 3, 4, 5, -1], r"client rows \[5\]"),
        (True, "integers"),
    ],
)
def test_validate_rejects_bad_budgets(scores, budgets, message):
    with pytest.raises(ValueError, match=message):
        validate_problem(scores, budgets)


def test_validate_names_the_bad_rows(scores):
    bad = scores.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"\[4\]"):
        validate_problem(bad, 2)


# --- problem ------------------------------------------------------------------------------------


def test_top_b_takes_the_highest_scores_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]])
    masks = top_b_masks(scores, [2, 3])
    assert masks.tolist() == [[False, True, False, True], [True, True, True, False]]


def test_objectives_match_their_definition(scores):
    rng = np.random.default_rng(0)
    problem = Problem.create(scores, [1, 2, 3, 4, 5, 6])
    masks = problem.random_masks(rng, 20)
    importance, variance = problem.evaluate(masks)
    for mask, imp, var in zip(masks, importance, variance):
        counts = mask.sum(axis=0)
        assert imp == pytest.approx(sum(scores[i, l] for i, l in zip(*np.nonzero(mask))))
        assert var == pytest.approx(np.mean((counts - counts.mean()) ** 2))
    single = problem.evaluate(masks[3])
    assert single[0] == pytest.approx(importance[3]) and single[1] == variance[3]


def test_coverage_variance_is_exact_for_equal_profiles():
    counts = np.array([[3, 1, 2, 0], [0, 2, 1, 3]])
    variance = coverage_variance(counts)
    assert variance[0] == variance[1] == pytest.approx(np.var(counts[0]))


@pytest.mark.parametrize("exact_budget", [True, False])
def test_random_masks_and_repair_keep_budgets(scores, exact_budget):
    rng = np.random.default_rng(1)
    budgets = np.array([1, 2, 3, 4, 5, 6])
    problem = Problem.create(scores, budgets, exact_budget)
    assert problem.is_feasible(problem.random_masks(rng, 30)).all()
    noisy = rng.random((30, 6, 10)) < 0.4
    noisy[0] = False
    noisy[1] = True
    repaired = problem.repair(noisy)
    assert problem.is_feasible(repaired).all()
    counts = noisy.sum(axis=-1)
    kept = repaired & noisy
    assert (kept.sum(axis=-1) == np.minimum(counts, budgets)).all()


def test_repair_leaves_feasible_assignments_alone(scores):
    problem = Problem.create(scores, 3)
    masks = problem.random_masks(np.random.default_rng(2), 5)
    assert (problem.repair(masks) == masks).all()


# --- front utilities ----------------------------------------------------------------------------


def test_nondominated_matches_brute_force():
    rng = np.random.default_rng(4)
    importance = rng.integers(0, 8, size=60).astype(float)
    variance = rng.integers(0, 8, size=60).astype(float)
    kept = nondominated(importance, variance)
    dominated = [
        any(
            (importance[j] >= importance[i])
            and (variance[j] <= variance[i])
            and (importance[j] > importance[i] or variance[j] < variance[i])
            for j in range(60)
        )
        for i in range(60)
    ]
    expected = {(importance[i], variance[i]) for i in range(60) if not dominated[i]}
    assert {(importance[k], variance[k]) for k in kept} == expected
    assert len(kept) == len(expected)
    assert np.all(np.diff(importance[kept]) > 0)


def test_pick_rules():
    front = np.array([[1.0, 0.0], [2.0, 0.2], [2.8, 0.5], [3.0, 1.5], [3.1, 3.0]])
    for rule in PICK_RULES:
        assert pick_point(front[:1], rule) == 0
        assert pick_point(front[:2], rule) == 1
    imp = (front[:, 0] - 1.0) / 2.1
    var = front[:, 1] / 3.0
    assert pick_point(front, "weighted-sum") == int(np.argmax(imp - var))
    assert pick_point(front, "tchebycheff") == int(np.argmin(np.maximum(1 - imp, var)))
    knee = pick_point(front, "knee")
    assert knee in _upper_hull(imp, var)[1:-1]
    assert knee == 2
    with pytest.raises(ValueError, match="pick must be one of"):
        pick_point(front, "median")


def test_knee_ignores_points_in_concave_dents():
    front = np.array([[0.0, 0.0], [0.3, 0.5], [0.6, 0.55], [1.0, 1.0]])
    assert _upper_hull(front[:, 0], front[:, 1]).tolist() == [0, 2, 3]
    assert pick_point(front, "knee") == 2
    assert pick_point(front, "weighted-sum") == 2


def test_tchebycheff_can_pick_a_point_off_the_hull():
    """Point 2 sits in a concave dent: hull-only rules cannot return it, Tchebycheff does."""
    front = np.array([[0.0, 0.0], [0.4, 0.1], [0.55, 0.45], [0.9, 0.5], [1.0, 1.0]])
    assert 2 not in _upper_hull(front[:, 0], front[:, 1])
    assert pick_point(front, "tchebycheff") == 2
    assert pick_point(front, "knee") == 3 and pick_point(front, "weighted-sum") == 3
    for rule in PICK_RULES:
        assert pick_point(front[:2], rule) == 1


def test_fair_reference_is_the_pushed_out_nadir():
    front = np.array([[2.0, 0.5], [3.0, 1.5], [4.0, 2.5]])
    assert fair_reference(front) == pytest.approx((1.8, 2.7))
    two_points = front[[0, 2]]
    reference = fair_reference(front)
    assert hypervolume(two_points, reference) / hypervolume(front, reference) < 0.75
    assert fair_reference(front[:1]) == pytest.approx((1.9, 0.6))


def test_pareto_optimal_against_a_true_front():
    truth = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 4.0]])
    points = np.array([[2.0, 1.0], [1.9, 1.0], [2.0, 2.0], [2.5, 2.0], [3.0, 4.0 + 1e-3], [1.0 + 1e-12, 0.0]])
    assert pareto_optimal(points, truth).tolist() == [True, False, False, True, False, True]


def test_hypervolume_matches_manual_area():
    rng = np.random.default_rng(5)
    points = rng.random((12, 2)) * [3.0, 2.0]
    reference = (0.0, 2.5)
    grid_i = np.linspace(0, 3, 601)[:-1] + 0.0025
    grid_v = np.linspace(0, 2.5, 501)[:-1] + 0.0025
    covered = (
        (points[:, 0][None, None, :] >= grid_i[:, None, None]) & (points[:, 1][None, None, :] <= grid_v[None, :, None])
    ).any(axis=2)
    assert hypervolume(points, reference) == pytest.approx(covered.mean() * 3.0 * 2.5, rel=0.02)
    assert hypervolume(points[:0], reference) == 0.0
    assert hypervolume(np.array([[1.0, 3.0]]), reference) == 0.0


# --- select ---------------------------------------------------------------------------------------


def test_select_local_is_the_clients_top_b(scores):
    result = select(scores, 3, algorithm="local")
    assert (result.masks == top_b_masks(scores, 3)).all()
    assert result.front.shape == (1, 2) and result.chosen == 0
    assert isinstance(result, SelectionResult) and result.algorithm == "local"


def test_select_rejects_unknown_names(scores):
    with pytest.raises(ValueError, match="unknown selection algorithm 'genetic'"):
        select(scores, 2, algorithm="genetic")
    with pytest.raises(ValueError, match="unknown pick rule 'middle'"):
        select(scores, 2, pick="middle")
    with pytest.raises(ValueError, match="unknown parameter 'popsize' for selector 'nsga2'"):
        select(scores, 2, algorithm="nsga2", popsize=10)
    with pytest.raises(ValueError, match="unknown parameter 'steps' for selector 'local'"):
        select(scores, 2, algorithm="local", steps=3)
    with pytest.raises(ValueError, match="'generations' of selector 'nsga2' must be a whole number"):
        select(scores, 2, algorithm="nsga2", generations=2.5)
    with pytest.raises(ValueError, match="'rho' of selector 'aco' must lie in"):
        select(scores, 2, algorithm="aco", rho=1.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        select(np.full((2, 3), np.nan), 1)


def test_the_five_metaheuristics_share_one_base_of_settings(scores):
    from dataclasses import fields

    from f3ocus_core.selection import aco, annealing, bee_colony, mopso, nsga2
    from f3ocus_core.selection.params import MetaheuristicParams

    shared = {f.name for f in fields(MetaheuristicParams)}
    assert shared == {"lagrangian_start", "polish", "local_search", "hull_walk"}
    classes = (nsga2.NSGA2Params, mopso.MOPSOParams, aco.ACOParams, bee_colony.ABCParams, annealing.SAParams)
    for cls in classes:
        assert issubclass(cls, MetaheuristicParams) and shared <= {f.name for f in fields(cls)}
        assert select(scores, 2, algorithm=cls.algorithm, seed=0).info["params"]["local_search"] == 16
        # the base's check runs for every selector and names it
        with pytest.raises(ValueError, match=f"'local_search' of selector '{cls.algorithm}' must be >= 0"):
            select(scores, 2, algorithm=cls.algorithm, local_search=-1)


def test_a_mistyped_parameter_gets_the_closest_name(scores):
    with pytest.raises(
        ValueError,
        match="unknown parameter 'populaton' for selector 'nsga2'; did you mean 'population'\\?; known: .*generations",
    ):
        select(scores, 2, algorithm="nsga2", populaton=10)


def test_the_benchmarks_budget_cases():
    assert BUDGET_CASES == ("4", "mixed")
    assert case_budgets("4", 3).tolist() == [4, 4, 4]
    assert case_budgets("mixed", 7).tolist() == [2, 3, 4, 5, 6, 2, 3]
    with pytest.raises(ValueError, match="unknown budget case 'even'"):
        case_budgets("even", 3)


def test_params_arrive_as_numbers_from_run_configs(scores):
    result = select(scores, 2, algorithm="sa", seed=1, steps=30, chains=4, lagrangian_start=0, exchange=0.5)
    assert result.info["params"]["lagrangian_start"] == 0 and isinstance(result.info["params"]["lagrangian_start"], int)
    assert result.info["params"]["steps"] == 30


def test_as_dict_is_json_and_consistent(scores):
    result = select(scores, [1, 2, 3, 1, 2, 3], algorithm="nsga2", seed=0, population=10, generations=5)
    record = json.loads(json.dumps(result.as_dict()))
    assert record["layers"] == [np.flatnonzero(row).tolist() for row in result.masks]
    assert len(record["front"]) == len(result.front) == len(record["front_layers"])
    assert record["front_layers"][record["chosen"]] == record["layers"]
    assert record["importance"] == pytest.approx(result.front[result.chosen, 0])
    assert record["algorithm"] == "nsga2" and record["pick"] == "knee"


def test_algorithm_names():
    assert ALGORITHMS == ("nsga2", "mopso", "aco", "abc", "sa", "exact", "local", "fixed")


def test_fixed_gives_every_client_the_given_layers_whatever_the_scores(scores):
    result = select(scores, 2, algorithm="fixed", layers=(1, 3))
    expected = np.zeros_like(result.masks)
    expected[:, [1, 3]] = True
    assert np.array_equal(result.masks, expected)
    assert np.array_equal(select(scores[::-1], 2, algorithm="fixed", layers=(1, 3)).masks, expected)


@pytest.mark.parametrize(
    ("layers", "budget", "message"),
    [
        ((), 2, "needs its layers"),
        ((1, 1), 2, "distinct"),
        ((0, 99), 2, "does not exist"),
        ((0, 1), 1, "selection.budget='2'"),
    ],
)
def test_fixed_refuses_sets_it_cannot_give(scores, layers, budget, message):
    with pytest.raises(ValueError, match=message):
        select(scores, budget, algorithm="fixed", layers=layers)
