"""DEAP individuals of the layer-assignment problem: the creator classes and conversions.

Individuals are ``(N, L)`` bool arrays made by DEAP's ``creator`` (``np.ndarray`` base) with a
two-objective fitness, weights ``(+1, -1)``: importance up, coverage variance down. The creator
classes are global, so they are created once under names unlikely to clash with other code. The
Pareto archive (:mod:`f3ocus_core.selection.archive`) stores them, and NSGA-II's survival
(``deap.tools.selNSGA2``) sorts them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from deap import base, creator

FITNESS_NAME = "F3ocusSelectionFitness"
INDIVIDUAL_NAME = "F3ocusSelectionAssignment"


def individual_class() -> type[Any]:
    """The DEAP individual class (created on first use, reused afterwards)."""
    if not hasattr(creator, FITNESS_NAME):
        creator.create(FITNESS_NAME, base.Fitness, weights=(1.0, -1.0))
    if not hasattr(creator, INDIVIDUAL_NAME):
        creator.create(INDIVIDUAL_NAME, np.ndarray, fitness=getattr(creator, FITNESS_NAME))
    return getattr(creator, INDIVIDUAL_NAME)


def make_individuals(masks: np.ndarray, importance: np.ndarray, variance: np.ndarray) -> list:
    """DEAP individuals holding copies of ``masks`` with their fitness values set."""
    cls = individual_class()
    fitness_cls = getattr(creator, FITNESS_NAME)
    population = []
    for mask, imp, var in zip(masks, importance, variance):
        ind = np.array(mask, dtype=bool).view(cls)
        ind.fitness = fitness_cls((float(imp), float(var)))
        population.append(ind)
    return population


def as_masks(population: list) -> np.ndarray:
    """Stack individuals into a ``(P, N, L)`` bool array."""
    return np.stack([np.asarray(ind, dtype=bool) for ind in population])
