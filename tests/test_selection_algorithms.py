"""Every selector: budgets kept, fronts non-dominated, same seed same answer, exact is optimal."""

import itertools

import numpy as np
import pytest

from f3ocus_core.selection import (
    ALGORITHMS,
    Problem,
    fair_reference,
    hypervolume,
    nondominated,
    pareto_optimal,
    pick_point,
    select,
)
from f3ocus_core.selection.front import _upper_hull
from f3ocus_core.selection.moves import lagrangian_assignments, mutate
from f3ocus_core.selection.synthetic import lntk_like_scores

METAHEURISTICS = ("nsga2", "mopso", "aco", "abc", "sa")

#: Small settings so that each run takes a few hundredths of a second.
QUICK = {
    "nsga2": {"population": 16, "generations": 10},
    "mopso": {"particles": 12, "iterations": 10},
    "aco": {"ants": 8, "iterations": 8, "daemon": 8},
    "abc": {"sources": 8, "onlookers": 8, "cycles": 10},
    "sa": {"chains": 8, "steps": 80, "restart": 30},
    "exact": {},
    "local": {},
}


def _enumerated_front(scores: np.ndarray, budgets: np.ndarray, exact_budget: bool) -> np.ndarray:
    """The true front by listing every feasible assignment."""
    n_clients, n_layers = scores.shape
    rows = []
    for budget in budgets:
        sizes = [budget] if exact_budget else range(1, budget + 1)
        options = [
            np.isin(np.arange(n_layers), combo) for k in sizes for combo in itertools.combinations(range(n_layers), k)
        ]
        rows.append(np.array(options))
    grid = np.array(list(itertools.product(*[range(len(r)) for r in rows])))
    masks = np.stack([rows[i][grid[:, i]] for i in range(n_clients)], axis=1)
    importance, variance = Problem.create(scores, budgets, exact_budget).evaluate(masks)
    kept = nondominated(importance, variance)
    return np.column_stack([importance[kept], variance[kept]])


#: The selectors that search a front ("fixed" gives every client the same given layers: its own tests).
SEARCHING = [name for name in ALGORITHMS if name != "fixed"]


@pytest.mark.parametrize("algorithm", SEARCHING)
@pytest.mark.parametrize("exact_budget", [True, False])
def test_fronts_keep_budgets_and_are_non_dominated(algorithm, exact_budget):
    scores = lntk_like_scores(5, 9, seed=11)
    budgets = [1, 2, 3, 4, 2]
    result = select(scores, budgets, algorithm=algorithm, seed=0, exact_budget=exact_budget, **QUICK[algorithm])
    problem = Problem.create(scores, budgets, exact_budget)
    assert result.front_masks.dtype == bool and result.front_masks.shape == (len(result.front), 5, 9)
    assert problem.is_feasible(result.front_masks).all()
    assert (result.masks == result.front_masks[result.chosen]).all()
    importance, variance = problem.evaluate(result.front_masks)
    assert np.allclose(result.front, np.column_stack([importance, variance]))
    assert len(nondominated(importance, variance)) == len(result.front)
    assert np.all(np.diff(result.front[:, 0]) > 0) and np.all(np.diff(result.front[:, 1]) > 0)
    assert result.algorithm == algorithm and result.seconds >= 0


@pytest.mark.parametrize("algorithm", SEARCHING)
def test_same_seed_same_answer(algorithm):
    scores = lntk_like_scores(6, 12, seed=2)
    first = select(scores, 3, algorithm=algorithm, seed=7, **QUICK[algorithm])
    second = select(scores, 3, algorithm=algorithm, seed=7, **QUICK[algorithm])
    assert np.array_equal(first.front, second.front)
    assert np.array_equal(first.front_masks, second.front_masks)
    assert first.chosen == second.chosen


def test_different_seeds_explore_differently():
    """Seeds drive the operators (with the memetic step on, small fronts come out exact for every seed)."""
    scores = lntk_like_scores(6, 12, seed=2)
    fronts = {
        select(
            scores, 3, algorithm="nsga2", seed=s, polish=0, local_search=0, hull_walk=0, **QUICK["nsga2"]
        ).front.tobytes()
        for s in range(3)
    }
    assert len(fronts) > 1


@pytest.mark.parametrize(
    ("shape", "budgets"),
    [((3, 5), [2, 2, 2]), ((4, 5), [1, 2, 3, 2]), ((3, 6), [1, 5, 3]), ((2, 7), [3, 3])],
)
@pytest.mark.parametrize("exact_budget", [True, False])
def test_exact_equals_enumeration(shape, budgets, exact_budget):
    scores = lntk_like_scores(*shape, seed=sum(budgets))
    truth = _enumerated_front(scores, np.array(budgets), exact_budget)
    result = select(scores, budgets, algorithm="exact", exact_budget=exact_budget)
    assert result.info["complete"] is True
    assert result.front.shape == truth.shape
    assert np.allclose(result.front, truth, rtol=0, atol=1e-9)


@pytest.mark.parametrize("algorithm", METAHEURISTICS)
def test_metaheuristics_find_the_whole_front_of_small_problems(algorithm):
    scores = lntk_like_scores(4, 6, seed=5)
    truth = _enumerated_front(scores, np.full(4, 2), True)
    result = select(scores, 2, algorithm=algorithm, seed=0)
    assert len(truth) >= 5
    assert result.front.shape == truth.shape and np.allclose(result.front, truth)


def test_exact_time_limit_returns_a_partial_front():
    scores = lntk_like_scores(10, 32, seed=0)
    result = select(scores, 4, algorithm="exact", time_limit=1e-6)
    full_top = select(scores, 4, algorithm="local").front[0]
    assert result.info["complete"] is False
    assert np.allclose(result.front[-1], full_top)
    assert Problem.create(scores, 4).is_feasible(result.front_masks).all()


def test_edge_sizes_work_for_every_selector():
    cases = [(np.ones((1, 1)), 1), (np.array([[0.3, 0.7]]), 1), (np.zeros((3, 4)), 2), (np.ones((2, 3)), 3)]
    for scores, budget in cases:
        for algorithm in SEARCHING:
            result = select(scores, budget, algorithm=algorithm, seed=0, **QUICK[algorithm])
            assert (result.masks.sum(axis=1) == budget).all()


def test_seeds_span_the_front_and_mutation_keeps_budgets():
    scores = lntk_like_scores(8, 16, seed=4)
    for exact_budget in (True, False):
        problem = Problem.create(scores, [1, 2, 3, 4, 4, 3, 2, 1], exact_budget)
        seeds = lagrangian_assignments(problem, 12)
        importance, variance = problem.evaluate(seeds)
        top = problem.evaluate(problem.top_b())
        assert importance[0] == pytest.approx(top[0]) and variance[0] == top[1]
        assert variance.min() < 0.5 * top[1]
        assert problem.is_feasible(seeds).all()
        mutated = mutate(problem, seeds, np.random.default_rng(0), rate=3.0)
        assert problem.is_feasible(mutated).all()
        assert (mutated != seeds).any(axis=(1, 2)).mean() > 0.5


#: The parameter that counts each metaheuristic's iterations; 0 switches its search off.
ITERATIONS = {"nsga2": "generations", "mopso": "iterations", "aco": "iterations", "abc": "cycles", "sa": "steps"}


@pytest.fixture(scope="module")
def exact_10x32():
    """One 10 x 32 instance (budget 4) whose exact front takes under a second, and its fair HV."""
    scores = lntk_like_scores(10, 32, seed=10003)
    truth = select(scores, 4, algorithm="exact").front
    reference = fair_reference(truth)
    return scores, reference, hypervolume(truth, reference), truth


def _run(instance, algorithm: str, **params):
    scores, reference, best, truth = instance
    front = select(scores, 4, algorithm=algorithm, seed=0, **params).front
    return hypervolume(front, reference) / best, bool(pareto_optimal(front[pick_point(front, "knee")], truth)[0])


@pytest.mark.parametrize("algorithm", METAHEURISTICS)
def test_default_search_reaches_the_exact_front_without_the_start(algorithm, exact_10x32):
    """Defaults (Lagrangian start off) reach 0.99 of the exact HV (fair reference: the nadir, not
    importance 0), and the knee they choose is Pareto-optimal."""
    ratio, optimal = _run(exact_10x32, algorithm)
    assert 0.99 <= ratio <= 1.0 + 1e-9, (algorithm, ratio)
    assert optimal, algorithm


@pytest.mark.parametrize("algorithm", METAHEURISTICS)
def test_switching_the_search_off_loses_the_front(algorithm, exact_10x32):
    """The same call with the search switched off (no iterations, so no local search either; ACO: one
    colony without learning, daemon or local search) keeps only its polished random first population,
    far from the front; and without the memetic step the operators alone fall short too."""
    searched, _ = _run(exact_10x32, algorithm)
    unsearched = {ITERATIONS[algorithm]: 0}
    if algorithm == "aco":
        unsearched.update(iterations=1, daemon=0, local_search=0, hull_walk=0)
    baseline, _ = _run(exact_10x32, algorithm, **unsearched)
    plain, _ = _run(exact_10x32, algorithm, polish=0, local_search=0, hull_walk=0)
    assert searched >= baseline + 0.3, (algorithm, searched, baseline)
    assert searched >= plain + 0.01, (algorithm, searched, plain)


@pytest.mark.parametrize("algorithm", METAHEURISTICS)
def test_the_hull_walk_gives_every_selector_both_ends_of_the_front_at_once(algorithm, exact_10x32):
    """After one local-search step each selector's front spans the exact front from the clients' top-b
    to the most balanced point and holds every hull vertex; with ``hull_walk=0`` it does not."""
    scores, _, _, truth = exact_10x32
    first_step = {ITERATIONS[algorithm]: 10 if algorithm == "sa" else 1}
    walked = select(scores, 4, algorithm=algorithm, seed=0, **first_step).front
    hull = truth[_upper_hull(truth[:, 0], truth[:, 1])]
    held = (
        np.isclose(walked[None, :, 0], hull[:, None, 0], rtol=0, atol=1e-9) & (walked[None, :, 1] == hull[:, None, 1])
    ).any(axis=1)
    assert held.all(), (algorithm, hull[~held])
    unwalked = select(scores, 4, algorithm=algorithm, seed=0, hull_walk=0, **first_step).front
    assert unwalked[:, 0].max() < truth[:, 0].max() - 1e-9 or unwalked[:, 1].min() > truth[:, 1].min()
