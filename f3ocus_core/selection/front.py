"""Pareto fronts of (importance, variance) pairs: filtering, the rule that picks one point, hypervolume.

Importance is maximised and variance minimised. A point dominates another when it is no worse in
both objectives and better in at least one.

Pick rules (``pick=`` of :func:`f3ocus_core.selection.select`), both on objectives min-max normalised
over the front, ``i' = (I - I_min) / (I_max - I_min)`` and ``v' = (V - V_min) / (V_max - V_min)``:

* ``"knee"`` (default): the supported point (vertex of the front's convex hull) where the front bends
  most, i.e. where the slope of the hull changes by the largest angle between its two adjacent hull
  edges (the angle-based knee of Branke, Deb, Dierolf and Osswald, 2004, "Finding knees in
  multi-objective optimization"). Left of it, balance is cheap in importance; right of it, it is
  expensive. Non-supported points (in concave dents of the front) are never knees, which keeps the
  rule stable on the dense, slightly ragged fronts of this problem.
* ``"weighted-sum"``: the point with the largest equal-weight sum ``0.5 * i' + 0.5 * (1 - v')``.
  (On a normalised 2-D front this is also the point farthest from the straight line through the two
  extreme points, the "distance to chord" knee of Das, 1999.)

Both break ties by higher importance. A front of one point picks it; with two points both rules pick
the higher importance (the balanced extreme is never preferred without a third point to show a bend).
"""

from __future__ import annotations

import numpy as np

PICK_RULES: tuple[str, ...] = ("knee", "weighted-sum")


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
