"""What the F3OCUS strategy carries from one round to the next, in one typed object.

Flower's FedAvg carries nothing but the global arrays between rounds. F3OCUS also carries the
layer scores each client returned with its last evaluation (what the next round's selection runs
on), each client's last valid scores (its fall-back if its next ones are unusable), who the clients
are, and, for ``control = "local-only"``, each client's own model. The current round's measurements
(its assignment, times, bytes, failures) are its :class:`~f3ocus_core.recorder.RoundRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from f3ocus_core.recorder import RoundRecord
from f3ocus_flower.protocol import ClientInfo, ScoresReply


@dataclass(frozen=True)
class ClientScores:
    """One client's scores for the next round: its reply as parsed, and the normalised scores as the
    selector takes them (None when they failed :func:`~server_app.replies.check_score_values`:
    the client then trains its fall-back layers)."""

    reply: ScoresReply
    values: np.ndarray | None


@dataclass
class StrategyState:
    """The state of a run between rounds.

    Attributes
    ----------
    global_units : dict[str, np.ndarray]
        The global trainable units, as of the last aggregation.
    clients : dict[int, ClientInfo]
        Per node id, who the client is (from its last reply).
    scores : dict[int, ClientScores]
        Per node id, the scores its last evaluation (or a resumed run's ``query``) returned for the
        next round; a client absent here failed that evaluation or sent no parsable scores.
    last_valid_scores : dict[int, np.ndarray]
        Per node id, the newest scores that passed the checks (checkpointed by partition id).
    local_units : dict[int, dict[str, np.ndarray]]
        ``control = "local-only"``: per node id, the units of its own model once it has trained.
    record : RoundRecord
        What the current round has measured so far.
    """

    global_units: dict[str, np.ndarray] = field(default_factory=dict)
    clients: dict[int, ClientInfo] = field(default_factory=dict)
    scores: dict[int, ClientScores] = field(default_factory=dict)
    last_valid_scores: dict[int, np.ndarray] = field(default_factory=dict)
    local_units: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    record: RoundRecord = field(default_factory=lambda: RoundRecord(0))

    def units_of(self, node: int) -> dict[str, np.ndarray]:
        """The units ``node`` works on: its own model's once it has one, else the global ones."""
        return self.local_units.get(node, self.global_units)

    def reported_examples(self, node: int) -> int | None:
        """The training-example count ``node`` reported with its scores (its ``train`` reply must
        report the same), or None if it sent none that parsed."""
        scores = self.scores.get(node)
        return None if scores is None else scores.reply.num_examples
