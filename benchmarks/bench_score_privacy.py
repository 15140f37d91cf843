"""What DP on the layer scores (``dp.score-noise-multiplier``) does to the server's layer selection.

Instances: the selection bench's (``benchmarks/bench_selection.py``): LNTK-like 10 x 32 score
matrices (:func:`f3ocus_core.selection.synthetic.lntk_like_scores`, seeds ``10000 + s``), budgets 4
for every client and the mixed case (``2 + i mod 5``). For each instance and noise multiplier ``tau``,
every client's score row goes through :func:`f3ocus_core.privacy.privatize_scores` (std
``tau sqrt 2`` per entry, back to the simplex), the default selector (``nsga2``, pick ``knee``) runs
on the noised matrix, and its front's assignments are scored with the *true* scores:

* fair HV ratio: HV of those assignments' true (importance, variance) points over HV of the exact
  front of the true scores (selector ``exact``), reference at that front's nadir pushed out by 10%
  (:func:`f3ocus_core.selection.fair_reference`), as in ``bench_selection.py``;
* unchanged: the share of clients whose chosen layer set is the one chosen on the noise-free scores
  (same selector, same seed);
* true-importance ratio: the chosen assignment's true importance over the noise-free choice's;
* epsilon per round and after 10 rounds (replace-one of a hospital's data, delta 1e-5).

Noise-free (``tau = 0``) is the reference row; the last line gives the true importance of random
assignments within the budgets (what no information gives). ``--draws`` noise draws per instance.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_score_privacy.py`` (a few minutes on one core).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from f3ocus_core.privacy import PrivacyLedger, PrivacySettings, privatize_scores  # noqa: E402
from f3ocus_core.selection import Problem, fair_reference, hypervolume, nondominated, select  # noqa: E402
from f3ocus_core.selection.synthetic import BUDGET_CASES, case_budgets, lntk_like_scores  # noqa: E402

LEVELS = (0.0, 0.001, 0.01, 0.1, 1.0)


def true_front(problem: Problem, masks: np.ndarray) -> np.ndarray:
    """The non-dominated (importance, variance) points of ``masks`` under ``problem``'s true scores."""
    importance, variance = problem.evaluate(masks)
    points = np.column_stack([importance, variance])
    return points[nondominated(points[:, 0], points[:, 1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--layers", type=int, default=32)
    args = parser.parse_args()
    results: dict[float, dict[str, list[float]]] = {
        tau: {"hv": [], "unchanged": [], "importance": []} for tau in LEVELS
    }
    random_importance = []
    for case in BUDGET_CASES:
        budgets = case_budgets(case, args.clients)
        for seed in range(args.seeds):
            scores = lntk_like_scores(args.clients, args.layers, seed=10000 + seed)
            problem = Problem.create(scores, budgets)
            truth = select(scores, budgets, algorithm="exact", seed=seed).front
            reference = fair_reference(truth)
            best = hypervolume(truth, reference)
            clean = select(scores, budgets, seed=seed)
            clean_importance = float(problem.evaluate(clean.masks[None])[0][0])
            masks = problem.random_masks(np.random.default_rng(seed), 100)
            random_importance.append(float(np.mean(problem.evaluate(masks)[0])) / clean_importance)
            for tau in LEVELS:
                rng = np.random.default_rng(1000 * seed + 7)
                for _ in range(args.draws if tau > 0 else 1):
                    noised = np.stack([privatize_scores(row, tau, rng) for row in scores]) if tau > 0 else scores
                    result = select(noised, budgets, seed=seed)
                    front = true_front(problem, result.front_masks)
                    results[tau]["hv"].append(hypervolume(front, reference) / best)
                    results[tau]["unchanged"].append(float(np.mean(np.all(result.masks == clean.masks, axis=1))))
                    results[tau]["importance"].append(
                        float(problem.evaluate(result.masks[None])[0][0]) / clean_importance
                    )
    instances = len(BUDGET_CASES) * args.seeds
    print(
        f"{args.clients} clients x {args.layers} layers, budgets 4 and mixed, {args.seeds} seeds each "
        f"({instances} instances), {args.draws} noise draws per instance; selector nsga2, pick knee"
    )
    print(
        "| tau | noise std per score | epsilon, 1 round | epsilon, 10 rounds | fair HV ratio (mean, min) "
        "| clients unchanged | true importance of the choice |"
    )
    print("|---|---|---|---|---|---|---|")
    for tau in LEVELS:
        row = results[tau]
        if tau > 0:
            ledger = PrivacyLedger(PrivacySettings(score_noise_multiplier=tau, delta=1e-5), args.clients)
            one = ledger.record(args.clients)["epsilon_scores"]
            for _ in range(9):
                ten = ledger.record(args.clients)["epsilon_scores"]
            eps = f"{one:.3g} | {ten:.3g}"
        else:
            eps = "inf | inf"
        print(
            f"| {tau:g} | {tau * np.sqrt(2):.3g} | {eps} | {np.mean(row['hv']):.4f}, {np.min(row['hv']):.4f} "
            f"| {np.mean(row['unchanged']):.1%} | {np.mean(row['importance']):.4f} |"
        )
    print(
        f"a random assignment within the budgets: true importance {np.mean(random_importance):.4f} of the "
        f"noise-free choice's; mean score of a layer: {1 / args.layers:.3g} (rows sum to 1)"
    )


if __name__ == "__main__":
    main()
