"""Pareto fronts of (importance, variance) pairs: filtering, the rules that pick one point, measures.

Importance is maximised and variance minimised. A point dominates another when it is no worse in
both objectives and better in at least one.

Pick rules (``pick=`` of :func:`f3ocus_core.selection.select`), all on objectives min-max normalised
over the front, ``i' = (I - I_min) / (I_max - I_min)`` and ``v' = (V - V_min) / (V_max - V_min)``:

* ``"knee"`` (default): the supported point (vertex of the front's convex hull) where the hull bends
  most, i.e. where the slope changes by the largest angle between its two adjacent hull edges (the
  angle-based knee of Branke, Deb, Dierolf and Osswald, 2004). Hull-only.
* ``"tchebycheff"``: the point with the smallest ``max(1 - i', v')``, the largest share of
  importance given up or of coverage imbalance kept, whichever is worse: the point where the two
  normalised losses are balanced (Tchebycheff scalarisation from the ideal point ``(1, 0)``, Bowman
  1976; ties by the smaller ``(1 - i') + v'``, the augmented form of Steuer and Choo 1983, then by
  higher importance). Every point of a front can be the one chosen, including non-supported points
  in concave dents, so the choice depends on the search having found the true front there.
* ``"weighted-sum"``: the largest ``0.5 * i' + 0.5 * (1 - v')``. This is also the point farthest from
  the straight line through the two extreme points (the "distance to chord" knee of Das, 1999): on
  the normalised front that distance is proportional to ``i' - v'``, a linear function, so its
  maximum is always a vertex of the convex hull. Hull-only.

A hull-only rule can only return points that a Lagrangian (weighted-sum) search finds by itself
(:func:`f3ocus_core.selection.moves.lagrangian_assignments`). ``"tchebycheff"`` is the rule that
lets the metaheuristics decide; it is not the default because, measured by
``benchmarks/bench_selection.py``, the point it picks from a metaheuristic's front is dominated by
the exact front far more often than the knee (see docs/selection.md).
A front of one point picks it; with two points every rule picks the higher importance.

Measures: :func:`hypervolume`, and the fair reference point :func:`fair_reference` (the true front's
nadir pushed out by 10% of each objective's range), and :func:`pareto_optimal`, whether a point is
dominated by any point of a reference front.
"""

from __future__ import annotations

import numpy as np

PICK_RULES: tuple[str, ...] = ("knee", "tchebycheff", "weighted-sum")


def nondominated(importance: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points, one per distinct objective pair, by increasing importance.

    Among points with equal objectives the first one (lowest index) is kept.
    """
    importance = np.asarray(importance, dtype=float)
    variance = np.asarray(variance, dtype=float)
    if importance.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(importance.size), -importance, variance))
    kept, best = [], -np.inf
    for index in order:
        if importance[index] > best:
            kept.append(index)
            best = importance[index]
    kept = np.asarray(kept, dtype=np.int64)
    return kept[np.argsort(importance[kept], kind="stable")]


def pick_point(front: np.ndarray, rule: str = "knee") -> int:
    """Index of the chosen point in an ``(F, 2)`` front of (importance, variance) sorted by importance."""
    if rule not in PICK_RULES:
        raise ValueError(f"pick must be one of {PICK_RULES}; got {rule!r}.")
    front = np.asarray(front, dtype=float)
    if len(front) <= 2:
        return len(front) - 1
    imp, var = _normalise(front)
    if rule == "tchebycheff":
        worst = np.maximum(1.0 - imp, var)
        tied = np.flatnonzero(worst <= worst.min() + 1e-12)
        total = (1.0 - imp[tied]) + var[tied]
        tied = tied[total <= total.min() + 1e-12]
        return int(tied[np.argmax(front[tied, 0])])
    if rule == "weighted-sum":
        value = 0.5 * imp + 0.5 * (1.0 - var)
    else:
        value = np.full(len(front), -np.inf)
        hull = _upper_hull(imp, var)
        if len(hull) >= 3:
            value[hull[1:-1]] = _bend_angles(imp[hull], var[hull])
        else:
            value[hull] = 0.5 * imp[hull] + 0.5 * (1.0 - var[hull])
    best = np.flatnonzero(value >= value.max() - 1e-12)
    return int(best[np.argmax(front[best, 0])])


def hypervolume(front: np.ndarray, reference: tuple[float, float]) -> float:
    """Area dominated by a 2-D front of (importance, variance) and bounded by ``reference``.

    ``reference = (importance_ref, variance_ref)``; points with importance below or variance above
    the reference add nothing. Computed with ``moocore.hypervolume``, the routine behind
    ``deap.benchmarks.tools.hypervolume`` (minimisation, so importance is negated).
    """
    import moocore

    front = np.asarray(front, dtype=float).reshape(-1, 2)
    points = np.column_stack([-front[:, 0], front[:, 1]])
    ref = np.array([-reference[0], reference[1]], dtype=float)
    inside = (points < ref).all(axis=1)
    if not inside.any():
        return 0.0
    return float(moocore.hypervolume(points[inside], ref=ref))


def fair_reference(front: np.ndarray, margin: float = 0.1) -> tuple[float, float]:
    """Hypervolume reference point of a true front: its nadir pushed out by ``margin`` of each range.

    ``(I_min - margin * (I_max - I_min), V_max + margin * (V_max - V_min))``. With importance 0 as the
    reference, most of the area is a rectangle below the front's lowest importance that every front
    gets, so even a two-point front scores 0.75; from the nadir, the ratio measures the front itself.
    A one-point front gets a unit box around its point.
    """
    front = np.asarray(front, dtype=float).reshape(-1, 2)
    low, high = front.min(axis=0), front.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    return float(low[0] - margin * span[0]), float(high[1] + margin * span[1])


def pareto_optimal(points: np.ndarray, truth: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Whether each (importance, variance) point is non-dominated by every point of ``truth``.

    A truth point dominates when its importance is at least as high and its variance at most as high,
    one of them strictly; importance is compared with relative tolerance ``rtol`` (sums of floats),
    variance exactly (it is computed from integers).
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    truth = np.asarray(truth, dtype=float).reshape(-1, 2)
    tol = rtol * max(1.0, float(np.abs(truth[:, 0]).max(initial=0.0)))
    higher = truth[None, :, 0] > points[:, None, 0] + tol
    as_high = truth[None, :, 0] >= points[:, None, 0] - tol
    lower = truth[None, :, 1] < points[:, None, 1]
    as_low = truth[None, :, 1] <= points[:, None, 1]
    return ~np.asarray((as_high & as_low & (higher | lower)).any(axis=1))  # (N,): one flag per point


def _normalise(front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max normalised importance and variance (a constant objective maps to 0)."""
    spans = front.max(axis=0) - front.min(axis=0)
    scaled = (front - front.min(axis=0)) / np.where(spans > 0, spans, 1.0)
    return scaled[:, 0], scaled[:, 1]


def _bend_angles(imp: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Turning angle (radians) at each interior vertex of a polyline given by increasing importance."""
    heading = np.arctan2(np.diff(-var), np.diff(imp))
    return np.abs(np.diff(heading))


def _upper_hull(imp: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Indices (by increasing importance) of the front's supported points: the upper hull of (imp, -var)."""
    order = np.argsort(imp, kind="stable")
    hull: list[int] = []
    for index in order:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (imp[b] - imp[a]) * (-var[index] + var[a]) - (-var[b] + var[a]) * (imp[index] - imp[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(int(index))
    return np.asarray(hull)
