"""Accuracy against epsilon: the table and figure of docs/privacy.md ("Accuracy against epsilon").

Reads finished ``f3ocus-compare`` grids, one per privacy level, and prints per method and level the
final accuracy (mean ± sample std over the seeds all levels share), the epsilon the run spent
(``epsilon_updates`` of the last ``metrics.jsonl`` row) and the difference to the run without DP,
seed by seed; writes the figure (accuracy against epsilon, one line per method, the no-DP level at
the right and ``heads-only``, nothing shared trained, as the floor when its grid holds it).

The grids (run in the default shifted setting, docs/results.md; sigma from
``f3ocus_core.privacy.noise_multiplier_for(eps, 3, 8, 8, 1e-5)``)::

    f3ocus-compare --methods f3ocus-nsga2,lntk-alone,heads-only                   # no DP: results/default
    f3ocus-compare --name dp-clip-only --methods f3ocus-nsga2,lntk-alone --seeds 0,1,2 \\
        --run-config "dp.clip-norm=1.0 aggregation.lora='separate'"
    f3ocus-compare --name dp-eps8 --methods f3ocus-nsga2,lntk-alone --seeds 0,1,2 \\
        --run-config "dp.clip-norm=1.0 dp.noise-multiplier=1.1044921875 dp.delta=1e-5 dp.target-epsilon=8 \\
        aggregation.lora='separate'"
    # the same for epsilon 4 (sigma 2.005859375) and 1 (sigma 7.0078125)
    PYTHONPATH=. python benchmarks/plot_epsilon.py --results results --figure docs/privacy-epsilon.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from f3ocus_evidence.results import cell_result, read_rows

#: (label, grid name, epsilon on the figure's axis; inf = no noise)
LEVELS = (
    ("no DP", "default", math.inf),
    ("clip only", "dp-clip-only", math.inf),
    ("eps 8", "dp-eps8", 8.0),
    ("eps 4", "dp-eps4", 4.0),
    ("eps 1", "dp-eps1", 1.0),
)


def finals(results: Path, grid: str, method: str, seeds: list[int]) -> dict[int, tuple[float, float]]:
    """Per seed: (final accuracy, epsilon spent) of a finished cell (NaN epsilon without DP)."""
    out = {}
    for seed in seeds:
        folder = results / grid / "cells" / f"{method}-seed{seed}"
        if not (folder / "metrics.jsonl").exists():
            continue
        rows = read_rows(folder)
        out[seed] = (cell_result(method, seed, folder).final, float(rows[-1].get("epsilon_updates", math.nan)))
    return out


def main() -> None:
    """Print the table and write the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="the folder holding the grids")
    parser.add_argument("--methods", default="f3ocus-nsga2,lntk-alone")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--figure", default="", help="write the figure here (PNG)")
    args = parser.parse_args()
    results, methods, seeds = Path(args.results), args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    print("| method | level | seeds | final accuracy (mean ± std) | epsilon spent | vs no DP, per seed |")
    print("|---|---|---|---|---|---|")
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for method in methods:
        plain = finals(results, "default", method, seeds)
        for label, grid, epsilon in LEVELS:
            found = finals(results, grid, method, seeds)
            if not found:
                continue
            acc = np.array([found[s][0] for s in sorted(found)])
            spent = max(found[s][1] for s in found)
            diffs = " ".join(f"{found[s][0] - plain[s][0]:+.3f}" for s in sorted(found) if s in plain)
            std = acc.std(ddof=1) if len(acc) > 1 else 0.0
            print(
                f"| {method} | {label} | {len(acc)} | {acc.mean():.4f} ± {std:.4f} | "
                f"{'-' if math.isnan(spent) else '∞' if math.isinf(spent) else f'{spent:.2f}'} | {diffs} |"
            )
            if label != "clip only":
                curves.setdefault(method, []).append((epsilon, float(acc.mean()), float(std)))
    floor = finals(results, "default", "heads-only", seeds)
    if args.figure:
        plot(curves, float(np.mean([v[0] for v in floor.values()])) if floor else None, Path(args.figure))
        print(f"figure: {args.figure}")


def plot(curves: dict[str, list[tuple[float, float, float]]], floor: float | None, path: Path) -> None:
    """Accuracy against epsilon (log axis, no DP drawn at the right), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    right = 32.0  # where "no DP" is drawn on the log axis
    for method, points in curves.items():
        points = sorted(points, key=lambda p: p[0])
        xs = [right if math.isinf(e) else e for e, _, _ in points]
        ax.errorbar(xs, [m for _, m, _ in points], yerr=[s for _, _, s in points], marker="o", capsize=3, label=method)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label="heads-only (nothing shared)")
    ax.set_xscale("log")
    ax.set_xticks([1, 4, 8, right], ["1", "4", "8", "no DP"])
    ax.set_xlabel("epsilon (updates, client-level, delta 1e-5, 3 rounds)")
    ax.set_ylabel("final accuracy")
    ax.set_title("Accuracy against epsilon, shifted setting (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
