"""The exact polishing step: best importance for a coverage profile, and exact unit moves of coverage."""

import itertools

import numpy as np
import pytest

from f3ocus_core.selection import Problem, pareto_optimal, select
from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.front import _upper_hull
from f3ocus_core.selection.memetic import HullWalk, ParetoLocalSearch, coverage_mutation
from f3ocus_core.selection.synthetic import lntk_like_scores
from f3ocus_core.selection.transport import apply_move, moved_objectives, polish, transfer_moves


def _all_assignments(problem: Problem) -> np.ndarray:
    n_layers = problem.n_layers
    rows = []
    for budget in problem.budgets:
        sizes = [budget] if problem.exact_budget else range(1, budget + 1)
        rows.append(
            np.array(
                [
                    np.isin(np.arange(n_layers), combo)
                    for k in sizes
                    for combo in itertools.combinations(range(n_layers), k)
                ]
            )
        )
    grid = np.array(list(itertools.product(*[range(len(r)) for r in rows])))
    return np.stack([rows[i][grid[:, i]] for i in range(problem.n_clients)], axis=1)


def _best_by_profile(problem: Problem) -> tuple[np.ndarray, dict]:
    """Every assignment, and the brute-force best importance of each coverage profile."""
    masks = _all_assignments(problem)
    importance, _ = problem.evaluate(masks)
    best: dict[bytes, float] = {}
    for profile, value in zip(masks.sum(axis=1).astype(np.int8), importance):
        key = profile.tobytes()
        best[key] = max(best.get(key, -np.inf), float(value))
    return masks, best


def _profile(mask: np.ndarray) -> bytes:
    return mask.sum(axis=0).astype(np.int8).tobytes()


@pytest.mark.parametrize("exact_budget", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_polish_gives_the_best_importance_of_each_coverage_profile(exact_budget, seed):
    problem = Problem.create(lntk_like_scores(4, 5, seed=seed), [1, 2, 3, 2], exact_budget)
    masks, best = _best_by_profile(problem)
    picks = masks[np.random.default_rng(seed).choice(len(masks), 40, replace=False)]
    polished = polish(problem, picks)
    assert problem.is_feasible(polished).all()
    assert (polished.sum(axis=1) == picks.sum(axis=1)).all()
    importance, _ = problem.evaluate(polished)
    expected = [best[_profile(m)] for m in picks]
    assert np.allclose(importance, expected, rtol=0, atol=1e-12)
    assert (importance >= problem.evaluate(picks)[0] - 1e-12).all()
    assert any(e > i + 1e-9 for e, i in zip(expected, problem.evaluate(picks)[0]))


@pytest.mark.parametrize("exact_budget", [True, False])
def test_unit_moves_are_exact_and_stay_polished(exact_budget):
    problem = Problem.create(lntk_like_scores(4, 5, seed=7), [2, 2, 3, 1], exact_budget)
    masks, best = _best_by_profile(problem)
    members = polish(problem, masks[np.random.default_rng(1).choice(len(masks), 10, replace=False)])
    importance, _ = problem.evaluate(members)
    gain, hop = transfer_moves(problem, members)
    moved_imp, moved_var = moved_objectives(problem, members, importance, gain)
    checked = 0
    for k, a, c in zip(*np.nonzero(np.isfinite(gain))):
        moved = apply_move(problem, members[k], int(a), int(c), hop[k])
        assert problem.is_feasible(moved)
        imp, var = problem.evaluate(moved)
        assert imp == pytest.approx(moved_imp[k, a, c], abs=1e-12)
        assert imp == pytest.approx(best[_profile(moved)], abs=1e-12)
        assert var == moved_var[k, a, c]
        checked += 1
    assert checked > 50


def test_local_search_and_coverage_mutation_keep_budgets_and_polish():
    problem = Problem.create(lntk_like_scores(6, 10, seed=3), 3)
    rng = np.random.default_rng(0)
    start = problem.random_masks(rng, 8)
    mutated = coverage_mutation(problem, start, rng, rate=2.0)
    assert problem.is_feasible(mutated).all()
    assert np.allclose(problem.evaluate(polish(problem, mutated))[0], problem.evaluate(mutated)[0])
    archive = Archive()
    archive.update(start, *problem.evaluate(start))
    before = archive.objectives()
    local = ParetoLocalSearch(problem)
    assert local.step(archive, rng, 4) > 4
    after = archive.objectives()
    covered = ((after[None, :, 0] >= before[:, None, 0]) & (after[None, :, 1] <= before[:, None, 1])).any(axis=1)
    assert covered.all() and not np.array_equal(before, after)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("budgets", [3, [1, 2, 3, 4, 5, 2, 3, 4]])
def test_the_hull_walk_visits_exactly_the_supported_points_of_the_front(seed, budgets):
    """From the top-b, the walk's points are all Pareto-optimal and include every vertex of the exact
    front's convex hull, down to its balanced end (M-concavity makes the walk exact)."""
    scores = lntk_like_scores(8, 16, seed=seed)
    truth = select(scores, budgets, algorithm="exact").front
    problem = Problem.create(scores, budgets)
    archive = Archive()
    walk = HullWalk(problem)
    steps = walk.step(archive, 10_000)
    assert walk.done and steps > 1 and walk.step(archive, 10) == 0
    walked = archive.objectives()
    assert pareto_optimal(walked, truth).all()
    hull = truth[_upper_hull(truth[:, 0], truth[:, 1])]
    found = (
        np.isclose(walked[None, :, 0], hull[:, None, 0], rtol=0, atol=1e-9) & (walked[None, :, 1] == hull[:, None, 1])
    ).any(axis=1)
    assert found.all(), hull[~found]
    assert walked[:, 1].min() == truth[:, 1].min() and walked[:, 0].max() == pytest.approx(truth[:, 0].max())
    assert len(walked) < len(truth)


def test_the_hull_walk_advances_by_its_step_budget_and_resumes():
    problem = Problem.create(lntk_like_scores(8, 16, seed=4), 3)
    whole, parts = Archive(), Archive()
    HullWalk(problem).step(whole, 10_000)
    walk, total = HullWalk(problem), 0
    while not walk.done:
        done = walk.step(parts, 3)
        assert done <= 3
        total += done
    assert np.array_equal(whole.objectives(), parts.objectives())
