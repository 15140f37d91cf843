"""The F3OCUS message protocol: record keys, array conversions and the records both apps build.

A round is two exchanges, ``train`` then ``evaluate`` (see docs/architecture.md); the evaluate
exchange also carries the layer scores of the next round.

Every CONFIG record the server sends also holds RUN_KEY, the key under which a client keeps its
state on disk (:mod:`f3ocus_core.client_state`), and any key of the ``train_config`` or
``evaluate_config`` given to the strategy's ``start``.

- ``train``: server -> client ``{ARRAYS: the assigned layers' units, CONFIG: {SERVER_ROUND, LAYERS}}``;
  client -> server ``{ARRAYS: the trained units, METRICS: {NUM_EXAMPLES, TRAIN_LOSS, STEPS,
  SECONDS, TRAINABLE_PARAMS, TRAIN_GFLOP}, CLIENT: ClientInfo}``.
- ``evaluate``: server -> client ``{ARRAYS: global units, CONFIG: {SERVER_ROUND[, SCORE_ROUND]}}``;
  client -> server ``{METRICS: {LOSS, METRIC, accuracy or f1, NUM_EXAMPLES}, CLIENT: ClientInfo[,
  SCORES: ScoresReply]}``. With SCORE_ROUND (every round but the last) the client also scores its
  layers on the received units for round SCORE_ROUND, seeded by that round, and keeps the units for
  that round's ``train``.
- ``query`` (only the first round of a resumed run, whose fresh clients hold no units and whose
  server holds no scores): server -> client ``{ARRAYS: global units, CONFIG: {SERVER_ROUND}}``;
  client -> server ``{SCORES: ScoresReply, CLIENT: ClientInfo}``, the scores for SERVER_ROUND.

With ``secagg=true`` the train exchange becomes four, all ``train`` messages (as Flower's SecAgg+
sends its stages), each later one with SECAGG_STAGE in its CONFIG and a SECAGG record
(:mod:`server_app.secagg` and :mod:`client_app.secagg` name the keys inside):

- ``train``: as above, but the client keeps its clipped change and replies ``{SECAGG: its two
  public keys, METRICS, CLIENT}``, no units.
- ``share-keys``: server -> client every key holder's public keys; client -> server ``{SECAGG: one
  encrypted share pair per key holder}``.
- ``masked-input``: server -> client the share pairs addressed to it and the union layout (the
  units of every layer assigned that round); client -> server ``{ARRAYS: its masked int64 vector
  over the layout}``.
- ``unmask``: server -> client the clients whose masked vectors came; client -> server
  ``{SECAGG: the shares that rebuild their masks and the dropped clients' keys}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, ConfigScalar, ConfigScalarList, MetricRecord

# Keys of a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
SCORES = "scores"
METRICS = "metrics"
CLIENT = "client"

# Keys of the CONFIG record the server sends.
SERVER_ROUND = "server-round"
LAYERS = "layers"
RUN_KEY = "run-key"
SCORE_ROUND = "score-round"
SECAGG_STAGE = "secagg-stage"

# The record of the secure-aggregation stages (both ways) and its stages after ``train``.
SECAGG = "secagg"
SHARE_KEYS = "share-keys"
MASKED_INPUT = "masked-input"
UNMASK = "unmask"
# Keys inside a SECAGG record: node ids (ints), public keys, encrypted share pairs and revealed
# shares (bytes, in the order of NODES), the layout's unit keys, the clients to unmask.
NODES = "nodes"
PUBLIC_KEYS = ("public-mask-key", "public-share-key")
CIPHERTEXTS = "ciphertexts"
LAYOUT = "layout"
SURVIVORS = "survivors"
SHARES = "shares"

# Keys of the METRICS and SCORES records the clients send.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
STEPS = "steps"
SECONDS = "seconds"
TRAINABLE_PARAMS = "trainable-params"
TRAIN_GFLOP = "train-gflop"
LOSS = "loss"
METRIC = "metric"
NORMALIZED = "scores"
RAW = "raw"

# The records each reply carries (the server rejects any other).
QUERY_REPLY_RECORDS = (SCORES, CLIENT)
TRAIN_REPLY_RECORDS = (ARRAYS, METRICS, CLIENT)
EVALUATE_REPLY_RECORDS = (METRICS, CLIENT, SCORES)
SECAGG_REPLY_RECORDS = (SECAGG, ARRAYS, METRICS, CLIENT)


def state_to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """A ``{parameter name: array}`` dict as an ``ArrayRecord`` (what travels)."""
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in state.items()})


def record_to_state(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as a ``{parameter name: array}`` dict (what ``set_state`` loads)."""
    return {key: array.numpy() for key, array in record.items()}


def scalar(value: ConfigRecordValues) -> ConfigScalar:
    """A config or metric record value that must be one number or string, for ``int()``/``float()``.

    Raises
    ------
    TypeError
        When the record holds a list there: the sender and this side disagree on the protocol.
    """
    if isinstance(value, list):
        raise TypeError(f"expected one number or string in the record, got the list {value[:4]!r}.")
    return value


def scalar_list(value: ConfigRecordValues) -> ConfigScalarList:
    """A config or metric record value that must be a list (of numbers or strings); ``TypeError`` if not."""
    if not isinstance(value, list):
        raise TypeError(f"expected a list in the record, got {value!r}.")
    return value


def bytes_of(value: ConfigRecordValues) -> bytes:
    """A config record value that must be bytes (a key, a seed, a share); ``TypeError`` if not."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes in the record, got a {type(value).__name__}.")
    return value


def bytes_list(value: ConfigRecordValues) -> list[bytes]:
    """A config record value that must be a list of bytes; ``TypeError`` if not."""
    items = scalar_list(value)
    if not all(isinstance(item, bytes) for item in items):
        raise TypeError("expected a list of bytes in the record.")
    return [item for item in items if isinstance(item, bytes)]


def round_config(server_round: int, layers: list[int] | None = None, score_round: int | None = None) -> ConfigRecord:
    """The CONFIG record of a message: the round, for ``train`` the layer ids to train, for an
    ``evaluate`` the round its scores are for (none: score nothing)."""
    config: dict[str, ConfigRecordValues] = {SERVER_ROUND: int(server_round)}
    if layers is not None:
        config[LAYERS] = [int(layer) for layer in layers]
    if score_round is not None:
        config[SCORE_ROUND] = int(score_round)
    return ConfigRecord(config)


@dataclass(frozen=True)
class ClientInfo:
    """Who a client is, sent with every reply so the server can name it and order it.

    ``labels`` (the answer vocabulary or label set) rides along with ``query`` and ``evaluate``
    replies so the server can save it; ``train`` replies leave it out.
    """

    name: str
    partition_id: int
    kind: str
    labels: tuple[str, ...] | None = None

    def to_record(self) -> ConfigRecord:
        record: dict[str, ConfigRecordValues] = {
            "name": self.name,
            "partition-id": self.partition_id,
            "kind": self.kind,
        }
        if self.labels is not None:
            record["labels"] = list(self.labels)
        return ConfigRecord(record)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ClientInfo:
        labels = tuple(str(label) for label in scalar_list(record["labels"])) if "labels" in record else None
        return cls(str(record["name"]), int(scalar(record["partition-id"])), str(record["kind"]), labels)


@dataclass(frozen=True)
class ScoresReply:
    """A client's layer importance scores (with its ``evaluate`` reply, or as its answer to
    ``query``), normalised (what the selector uses) and raw, as
    :class:`f3ocus_core.importance.LayerScores` holds them."""

    normalized: tuple[float, ...]
    raw: tuple[float, ...]
    num_examples: int
    seconds: float

    def to_record(self) -> MetricRecord:
        return MetricRecord(
            {
                NORMALIZED: [float(v) for v in self.normalized],
                RAW: [float(v) for v in self.raw],
                NUM_EXAMPLES: int(self.num_examples),
                SECONDS: float(self.seconds),
            }
        )

    @classmethod
    def from_record(cls, record: MetricRecord) -> ScoresReply:
        return cls(
            tuple(float(v) for v in scalar_list(record[NORMALIZED])),
            tuple(float(v) for v in scalar_list(record[RAW])),
            int(scalar(record[NUM_EXAMPLES])),
            float(scalar(record[SECONDS])),
        )
