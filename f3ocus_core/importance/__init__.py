"""Layer importance: the F3OCUS LNTK score and the paper's baseline scorers behind one interface.

``score_layers(model, batch, layer_map, method=...)`` returns a :class:`LayerScores` whose
``normalized`` values (non-negative, sum 1) are what a client sends. See ``docs/importance.md``.
"""

from f3ocus_core.importance.api import SCORER_FUNCTIONS, SCORERS, score_layers
from f3ocus_core.importance.outputs import DEFAULT_PROJECTION_DIM, DEFAULT_REDUCTION, REDUCTIONS
from f3ocus_core.importance.scores import LayerScores

__all__ = [
    "DEFAULT_PROJECTION_DIM",
    "DEFAULT_REDUCTION",
    "REDUCTIONS",
    "SCORERS",
    "SCORER_FUNCTIONS",
    "LayerScores",
    "score_layers",
]
