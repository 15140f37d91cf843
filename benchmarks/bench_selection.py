"""How close every server-side selector comes to the true Pareto front, and how fast, on one core.

For N x L in {5 x 12, 9 x 24, 10 x 32, 100 x 64}, budgets 4 for every client and a mixed case
(``b_i = 2 + i mod 5``, mean 4), and 5 seeds, the score matrix is LNTK-like
(:func:`f3ocus_core.selection.synthetic.lntk_like_scores`: heavy-tailed, shared plus client-specific
structure, rows normalised). Every selector runs with its default parameters and seed = instance seed.

Quality is the hypervolume ratio HV(front found) / HV(reference front), reference point
(importance 0, variance 1.1 x the variance of the clients' own top-b). The reference front is the
exact front (selector ``exact``) where it completes within ``--exact-limit`` seconds; otherwise
(100 x 64) it is the union of every front computed for that instance: all selectors, the exact
sweep's partial front (each of its points is optimal) and, unless ``--no-long-runs``, NSGA-II and
SA with 4x their default budget. The row ``(seeds)`` is not a selector: it is the front of the 64
Lagrangian seeds alone (``moves.lagrangian_seeds``) that the metaheuristics start from, to show what
the search adds. Time is CPU seconds of the process (``time.process_time``) with
every math library held to one thread; wall seconds are shown too (the machine may be shared).

Targets: every metaheuristic >= 0.995 of the exact HV within 1 s at 10 x 32 and within 10 s at
100 x 64; ``exact`` under 5 s at 10 x 32. The last line is ``worst HV ratio at 10x32: <x> in <s> s``:
the worst ratio over metaheuristics, budget cases and seeds, and the longest of those runs.

Run: ``.venv/bin/python benchmarks/bench_selection.py`` (about 10 minutes; ``--quick`` for a
2-seed, small-size smoke run).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from f3ocus_core.selection import Problem, hypervolume, nondominated, select  # noqa: E402
from f3ocus_core.selection.moves import lagrangian_seeds  # noqa: E402
from f3ocus_core.selection.synthetic import lntk_like_scores  # noqa: E402

SIZES = ((5, 12), (9, 24), (10, 32), (100, 64))
METAHEURISTICS = ("nsga2", "mopso", "aco", "abc", "sa")
SELECTORS = METAHEURISTICS + ("exact", "local")
SEEDS = 64
LONG_RUNS = {"nsga2": {"population": 120, "generations": 200}, "sa": {"chains": 128, "steps": 2000}}


def budgets_for(case: str, n_clients: int) -> np.ndarray:
    """``"4"``: every client 4 layers; ``"mixed"``: 2, 3, 4, 5, 6, 2, ... (mean 4)."""
    return np.full(n_clients, 4) if case == "4" else 2 + np.arange(n_clients) % 5


def timed(scores: np.ndarray, budgets: np.ndarray, algorithm: str, seed: int, **params):
    """Run one selector; return the result, CPU seconds and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = select(scores, budgets, algorithm=algorithm, seed=seed, **params)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def run_instance(n_clients: int, n_layers: int, case: str, seed: int, exact_limit: float, long_runs: bool) -> dict:
    """All selectors on one instance; HV ratios against the exact front or the union of fronts."""
    scores = lntk_like_scores(n_clients, n_layers, seed=1000 * n_clients + seed)
    budgets = budgets_for(case, n_clients)
    problem = Problem.create(scores, budgets)
    reference = (0.0, 1.1 * float(problem.evaluate(problem.top_b())[1]))
    runs = {name: timed(scores, budgets, name, seed, **({"time_limit": exact_limit} if name == "exact" else {}))
            for name in SELECTORS}
    exact_complete = bool(runs["exact"][0].info["complete"])
    if exact_complete:
        truth = runs["exact"][0].front
    else:
        fronts = [result.front for result, _, _ in runs.values()]
        if long_runs:
            fronts += [timed(scores, budgets, name, seed + 100, **params)[0].front for name, params in LONG_RUNS.items()]
        stacked = np.concatenate(fronts)
        truth = stacked[nondominated(stacked[:, 0], stacked[:, 1])]
    best = hypervolume(truth, reference)
    rows = {}
    for name, (result, cpu, wall) in runs.items():
        rows[name] = {"hv": hypervolume(result.front, reference) / best, "cpu": cpu, "wall": wall,
                      "points": len(result.front)}
    cpu, wall = time.process_time(), time.perf_counter()
    seeds = lagrangian_seeds(problem, SEEDS)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    importance, variance = problem.evaluate(seeds)
    kept = nondominated(importance, variance)
    rows["(seeds)"] = {"hv": hypervolume(np.column_stack([importance[kept], variance[kept]]), reference) / best,
                       "cpu": cpu, "wall": wall, "points": len(kept)}
    return {"rows": rows, "exact_complete": exact_complete, "reference_points": len(truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--exact-limit", type=float, default=10.0,
                        help="seconds the exact sweep may take before it is used only as part of the union")
    parser.add_argument("--no-long-runs", action="store_true", help="leave the 4x-budget runs out of the union")
    parser.add_argument("--quick", action="store_true", help="2 seeds, sizes up to 10 x 32")
    args = parser.parse_args()
    seeds = 2 if args.quick else args.seeds
    sizes = SIZES[:3] if args.quick else SIZES

    header = (f"{'N x L':>7} {'budgets':>7} {'selector':>8} {'HV mean':>8} {'HV min':>8} {'cpu mean':>8} "
              f"{'cpu max':>8} {'wall max':>8} {'points':>6}  reference")
    print(header)
    print("-" * len(header))
    worst_ratio, worst_seconds = np.inf, 0.0
    for n_clients, n_layers in sizes:
        for case in ("4", "mixed"):
            results = [run_instance(n_clients, n_layers, case, seed, args.exact_limit, not args.no_long_runs)
                       for seed in range(seeds)]
            complete = sum(r["exact_complete"] for r in results)
            reference = ("exact front" if complete == seeds else
                         f"union of fronts ({seeds - complete}/{seeds} exact sweeps stopped at {args.exact_limit:g} s)")
            for name in SELECTORS + ("(seeds)",):
                hv = np.array([r["rows"][name]["hv"] for r in results])
                cpu = np.array([r["rows"][name]["cpu"] for r in results])
                wall = np.array([r["rows"][name]["wall"] for r in results])
                points = np.mean([r["rows"][name]["points"] for r in results])
                print(f"{n_clients:>3} x {n_layers:<3} {case:>7} {name:>8} {hv.mean():>8.5f} {hv.min():>8.5f} "
                      f"{cpu.mean():>8.3f} {cpu.max():>8.3f} {wall.max():>8.3f} {points:>6.0f}  {reference}")
                if (n_clients, n_layers) == (10, 32) and name in METAHEURISTICS:
                    worst_ratio = min(worst_ratio, float(hv.min()))
                    worst_seconds = max(worst_seconds, float(cpu.max()))
            sys.stdout.flush()
    print(f"worst HV ratio at 10x32: {worst_ratio:.5f} in {worst_seconds:.3f} s")


if __name__ == "__main__":
    main()
