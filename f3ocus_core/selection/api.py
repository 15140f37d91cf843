"""One entry point for the server: :func:`select` runs a selector and picks one point of its front."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from f3ocus_core.errors import did_you_mean
from f3ocus_core.selection import aco, annealing, bee_colony, exact, mopso, nsga2
from f3ocus_core.selection.archive import Archive
from f3ocus_core.selection.front import PICK_RULES, nondominated, pick_point
from f3ocus_core.selection.params import resolve_params
from f3ocus_core.selection.problem import Problem
from f3ocus_core.selection.result import SelectionResult


def _local(problem: Problem, rng: np.random.Generator, params: None) -> tuple[np.ndarray, dict]:
    """Every client takes its own top-b layers: the paper's "LNTK alone" baseline, no optimisation."""
    del rng, params
    return problem.top_b()[None], {}


@dataclass(frozen=True)
class FixedParams:
    """``fixed``: the layers every client trains (``selection.params='layers=0+1'``)."""

    layers: tuple[int, ...] = ()

    def check(self) -> None:
        """At least one layer, none negative, none twice."""
        if not self.layers:
            raise ValueError("selector 'fixed' needs its layers, e.g. selection.params='layers=0+1'.")
        if min(self.layers) < 0 or len(set(self.layers)) != len(self.layers):
            raise ValueError(
                f"parameter 'layers' of selector 'fixed' must be distinct layer ids >= 0; "
                f"got {'+'.join(map(str, self.layers))}."
            )


def _fixed(problem: Problem, rng: np.random.Generator, params: FixedParams) -> tuple[np.ndarray, dict]:
    """Every client trains the same given layers: a comparison's fixed-set row (no scores used), the
    reference that shows how much the choice of layers matters in a setting."""
    del rng
    layers = list(params.layers)
    if max(layers) >= problem.n_layers:
        raise ValueError(
            f"selector 'fixed': layer {max(layers)} does not exist; the model has layers 0..{problem.n_layers - 1}."
        )
    short = [int(b) for b in problem.budgets if (len(layers) != b if problem.exact_budget else len(layers) > b)]
    if short:
        raise ValueError(
            f"selector 'fixed': {len(layers)} layers, but the budgets are {short}; set "
            f"selection.budget='{len(layers)}'."
        )
    masks = np.zeros((problem.n_clients, problem.n_layers), dtype=bool)
    masks[:, layers] = True
    return masks[None], {}


_SELECTORS: dict[str, tuple[Callable, Any]] = {
    "nsga2": (nsga2.run, nsga2.NSGA2Params()),
    "mopso": (mopso.run, mopso.MOPSOParams()),
    "aco": (aco.run, aco.ACOParams()),
    "abc": (bee_colony.run, bee_colony.ABCParams()),
    "sa": (annealing.run, annealing.SAParams()),
    "exact": (exact.run, exact.ExactParams()),
    "local": (_local, None),
    "fixed": (_fixed, FixedParams()),
}

#: Names accepted by :func:`select`.
ALGORITHMS: tuple[str, ...] = tuple(_SELECTORS)


def selector_params(algorithm: str, params: Mapping[str, Any]) -> Any:
    """The hyperparameters ``algorithm`` runs with: its defaults with ``params`` applied, checked.

    The one check of ``selection.params``: the run config calls it at parse time (so a typo stops the
    run before round 0) and :func:`select` again on every call. Returns the selector's ``*Params``
    object, or None for ``local``, which takes none. Raises ``ValueError`` naming an unknown
    algorithm or parameter (with the closest known name) or a value out of range.
    """
    if algorithm not in _SELECTORS:
        raise ValueError(
            f"unknown selection algorithm {algorithm!r}{did_you_mean(algorithm, ALGORITHMS)}; "
            f"choose one of {', '.join(ALGORITHMS)}."
        )
    defaults = _SELECTORS[algorithm][1]
    if defaults is None:
        if params:
            raise ValueError(
                f"unknown parameter {next(iter(params))!r} for selector {algorithm!r}; it takes no parameters."
            )
        return None
    return resolve_params(defaults, algorithm, dict(params))


def select(
    scores: np.ndarray,
    budgets: int | Sequence[int],
    algorithm: str = "nsga2",
    seed: int = 0,
    pick: str = "knee",
    exact_budget: bool = True,
    **params: Any,
) -> SelectionResult:
    """Assign layers to clients: run a selector on the F3OCUS server problem and pick one point.

    Parameters
    ----------
    scores : np.ndarray
        ``(N, L)`` non-negative finite layer scores, one row per client.
    budgets : int or sequence of int
        Layers per client, one number for all or one per client, each in ``1..L``.
    algorithm : str
        One of :data:`ALGORITHMS`: ``nsga2``, ``mopso``, ``aco``, ``abc``, ``sa`` (metaheuristics),
        ``exact`` (the true front by an epsilon-constraint MILP sweep) or ``local`` (each client's own
        top-b, no optimisation).
    seed : int
        Seed of the selector's random generator; the same seed gives the same result.
    pick : str
        Rule that chooses one point of the front: ``"knee"`` or ``"weighted-sum"`` (vertices of the
        front's convex hull only) or ``"tchebycheff"`` (any point); see
        :mod:`f3ocus_core.selection.front`.
    exact_budget : bool
        True: every client trains exactly ``b_i`` layers. False: between 1 and ``b_i``.
    **params
        Hyperparameters of the selector (see the ``*Params`` dataclass of each selector module);
        an unknown name raises ``ValueError``.

    Returns
    -------
    SelectionResult
        The chosen masks, the whole non-dominated set found, and the index of the chosen point.
    """
    started = time.perf_counter()
    if pick not in PICK_RULES:
        raise ValueError(f"unknown pick rule {pick!r}; choose one of {', '.join(PICK_RULES)}.")
    settings = selector_params(algorithm, params)
    problem = Problem.create(scores, budgets, exact_budget)
    runner = _SELECTORS[algorithm][0]
    rng = np.random.default_rng(seed)
    found, info = runner(problem, rng, settings)
    masks = found.masks() if isinstance(found, Archive) else found
    importance, variance = problem.evaluate(masks)
    keep = nondominated(importance, variance)
    front = np.column_stack([importance[keep], variance[keep]])
    front_masks = masks[keep]
    chosen = pick_point(front, pick)
    if settings is not None:
        info = {**info, "params": {f.name: getattr(settings, f.name) for f in fields(settings)}}
    return SelectionResult(
        masks=front_masks[chosen].copy(),
        front=front,
        front_masks=front_masks,
        chosen=chosen,
        algorithm=algorithm,
        seconds=time.perf_counter() - started,
        pick=pick,
        info=info,
    )
