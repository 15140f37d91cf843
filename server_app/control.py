"""The run config's ``control``, as one policy object the strategy asks instead of testing names.

F3OCUS as configured (``control = ""``) has clients score their layers, the selector assign them,
and their updates averaged into one global model. The two comparison runs each turn one part off
(docs/config.md): ``heads-only`` assigns no layer (clients train only their personal heads, so
nothing is scored), ``local-only`` keeps one model per client that only its own updates change
(nothing is averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

from f3ocus_core.config import CONTROLS


@dataclass(frozen=True)
class Control:
    """What a run's ``control`` switches on.

    Attributes
    ----------
    name : str
        The ``control`` value.
    scores : bool
        Clients score their layers on each evaluation and the selector assigns layers from the
        scores; else every client is assigned no layer and nothing is scored.
    shared_model : bool
        Accepted updates are averaged into the one global model; else each goes into its client's
        own model, which is what that client is then sent.
    """

    name: str
    scores: bool = True
    shared_model: bool = True


_POLICIES = {
    "": Control(""),
    "heads-only": Control("heads-only", scores=False),
    "local-only": Control("local-only", shared_model=False),
}
assert set(_POLICIES) == set(CONTROLS), "every control value of f3ocus_core.config has a policy"


def control_of(name: str) -> Control:
    """The policy of ``control = name`` (a value :func:`~f3ocus_core.config.parse_run_config` accepted)."""
    return _POLICIES[name]
