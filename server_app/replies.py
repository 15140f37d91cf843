"""What a client's reply must satisfy before the server uses it, one check per rule.

The server cannot trust what arrives: a SuperNode may crash, run other code, be slow, or send garbage.
Each function here either returns what the strategy needs from a reply or raises :class:`Rejected`,
whose ``check`` names the rule that failed (docs/reliability.md lists them all). The strategy logs the
client and the check, notes them in the round's record, and leaves the reply out of the step:

- :func:`screen`: the envelope, every phase. The reply answers a message this phase sent (``sender``),
  is the first from its node (``duplicate``), carries no error (``error``) and the phase's message
  type (``type``); a node that was sent a message and did not answer within ``round-timeout`` is
  reported as ``timeout``.
- :func:`check_records`: the reply holds only the records of its phase, none padded (``records``).
- :func:`check_client_info`: the ``client`` record (``client-info``) and that it names the client as
  before and as no other node this phase (``identity``).
- :func:`parse_scores_reply` and :func:`check_score_values`: the ``query`` reply.
- :func:`check_train_reply`: the ``train`` reply, against the assignment and the global state.
- :func:`check_evaluate_reply`: the ``evaluate`` reply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from f3ocus_core.aggregation import PartialUpdate, check_magnitude, validate_update
from f3ocus_core.selection import check_scores
from f3ocus_flower.protocol import (
    ARRAYS,
    CLIENT,
    EVALUATE_REPLY_RECORDS,
    LOSS,
    METRIC,
    METRICS,
    NORMALIZED,
    NUM_EXAMPLES,
    QUERY_REPLY_RECORDS,
    RAW,
    SCORES,
    SECAGG_REPLY_RECORDS,
    SECONDS,
    TRAIN_GFLOP,
    TRAIN_LOSS,
    TRAIN_REPLY_RECORDS,
    TRAINABLE_PARAMS,
    ClientInfo,
    ScoresReply,
)

#: The largest ``num-examples`` a client may report. The average weights each client by this count,
#: so one absurd number would swamp it; no single site holds a billion training examples.
MAX_NUM_EXAMPLES = 10**9

#: Bytes allowed per array on top of its values: the ``.npy`` header Flower serialises it with
#: (128 bytes for the shapes of a model; 1 KiB leaves room for long shape tuples).
NPY_HEADER_ALLOWANCE = 1024

#: The largest loss (train or evaluate) a client may report: no real loss comes near it, and a
#: weighted mean of such values times ``MAX_NUM_EXAMPLES`` stays finite in float64.
MAX_LOSS = 1e30

#: Longest client name and kind, in characters (names become file names and log text).
MAX_NAME_LENGTH = 128

#: Most values a list in a Config/MetricRecord of a reply may hold, and most characters of a string
#: in one: a label set of 100 000 answers passes, a record padded with megabytes does not.
MAX_LIST_LENGTH = 100_000
MAX_STRING_LENGTH = 10_000

#: Largest ``trainable-params`` and ``train-gflop`` a train reply may report (far above any model here).
MAX_TRAINABLE_PARAMS = 10**13
MAX_TRAIN_GFLOP = 1e15

#: The records each phase's reply may carry; any other record is rejected (``records``), so no
#: payload escapes the ``size`` check and ``bytes_up``. With ``secagg=true`` every ``train`` reply
#: is checked as ``"secagg"`` (:mod:`server_app.secagg`).
REPLY_RECORDS = {
    "query": QUERY_REPLY_RECORDS,
    "train": TRAIN_REPLY_RECORDS,
    "evaluate": EVALUATE_REPLY_RECORDS,
    "secagg": SECAGG_REPLY_RECORDS,
}

#: Characters of a client's error reason kept in the log and the round's record.
MAX_REASON_LENGTH = 500


def printable(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    """``text`` as one log-safe line: control characters (newlines too) escaped, cut to ``limit``
    characters. Client-supplied text goes through this before it reaches the log or a record, so a
    reply cannot write fake lines into the server log."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


class Rejected(ValueError):
    """A reply broke the rule named ``check``; ``detail`` says how."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


@dataclass(frozen=True)
class Rejection:
    """One reply (or one missing reply) left out of a step: which node, why."""

    node: int
    check: str
    detail: str


def screen(replies: Iterable[Message], phase: str, expected: Iterable[int]) -> tuple[list[Message], list[Rejection]]:
    """Split ``replies`` of ``phase`` into those whose envelope is sound and the rejections.

    ``expected`` are the nodes this phase sent a message to. Each of them that sent nothing is
    rejected as ``timeout`` (Flower returns only the replies that arrived within the timeout);
    replies from other nodes (``sender``), second and later replies of a node (``duplicate``: the
    first one counts), error replies (``error``) and replies of another message type (``type``)
    are rejected in that order of precedence.
    """
    expected = set(expected)
    seen: set[int] = set()
    accepted: list[Message] = []
    rejected: list[Rejection] = []
    for msg in replies:
        node = msg.metadata.src_node_id
        if node not in expected:
            rejected.append(Rejection(node, "sender", f"node {node} was sent no {phase} message this round"))
            continue
        if node in seen:
            rejected.append(Rejection(node, "duplicate", f"a second {phase} reply from node {node}; the first counts"))
            continue
        seen.add(node)
        if msg.has_error():
            reason = printable(msg.error.reason or "no reason given")
            rejected.append(Rejection(node, "error", f"the client failed: {reason}"))
        elif msg.metadata.message_type != phase:
            rejected.append(Rejection(node, "type", f"reply of type {msg.metadata.message_type!r}, expected {phase!r}"))
        else:
            accepted.append(msg)
    for node in sorted(expected - seen):
        rejected.append(Rejection(node, "timeout", "no reply within round-timeout"))
    return accepted, rejected


def check_records(content: RecordDict, phase: str) -> None:
    """Raise :class:`Rejected` (``records``) unless ``content`` holds only the records of ``phase``'s
    reply (:data:`REPLY_RECORDS`) and its Config/MetricRecords hold no list longer than
    :data:`MAX_LIST_LENGTH` and no string longer than :data:`MAX_STRING_LENGTH`."""
    unexpected = sorted(set(content) - set(REPLY_RECORDS[phase]))
    if unexpected:
        raise Rejected(
            "records",
            f"unexpected records {[printable(k, 60) for k in unexpected[:3]]}; a {phase} "
            f"reply carries only {sorted(REPLY_RECORDS[phase])}",
        )
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            continue
        for key, value in record.items():
            items = value if isinstance(value, list) else [value]
            if len(items) > MAX_LIST_LENGTH or any(
                isinstance(v, str | bytes) and len(v) > MAX_STRING_LENGTH for v in items
            ):
                raise Rejected(
                    "records",
                    f"{name!r}/{printable(key, 60)!r} holds {len(items)} values or a string "
                    f"longer than {MAX_STRING_LENGTH} characters",
                )


_Record = TypeVar("_Record", ArrayRecord, ConfigRecord, MetricRecord)


def _record(content: RecordDict, key: str, kind: type[_Record], check: str) -> _Record:
    """``content[key]`` if it is a record of type ``kind``; else :class:`Rejected` as ``check``."""
    if key not in content:
        raise Rejected(check, f"no {key!r} record")
    record = content[key]
    if not isinstance(record, kind):
        raise Rejected(check, f"{key!r} is a {type(record).__name__}, expected a {kind.__name__}")
    return record


def _number(record: MetricRecord, key: str, check: str) -> float:
    """A finite number under ``key``; else :class:`Rejected` as ``check``."""
    if key not in record:
        raise Rejected(check, f"no {key!r}")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(check, f"{key!r} is {type(value).__name__}, expected a number")
    if not math.isfinite(value):
        raise Rejected(check, f"{key!r} is {value}")
    return float(value)


def _num_examples(record: MetricRecord) -> int:
    """``num-examples``: an integer in ``1..MAX_NUM_EXAMPLES``, else :class:`Rejected` (``num-examples``)."""
    if NUM_EXAMPLES not in record:
        raise Rejected("num-examples", f"no {NUM_EXAMPLES!r}")
    value = record[NUM_EXAMPLES]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected("num-examples", f"{value!r} is not an integer")
    if not 1 <= value <= MAX_NUM_EXAMPLES:
        raise Rejected("num-examples", f"{value} is outside 1..{MAX_NUM_EXAMPLES}")
    return int(value)


def check_client_info(
    content: RecordDict,
    node: int,
    known: Mapping[int, ClientInfo],
    names_this_phase: Mapping[str, int],
    required: bool = True,
    partitions_this_phase: Mapping[int, int] | None = None,
    num_partitions: int | None = None,
) -> ClientInfo | None:
    """The reply's :class:`ClientInfo`, after checking it names this client consistently.

    ``known`` is what each node said before; ``names_this_phase`` and ``partitions_this_phase`` the
    names and partition ids already taken by other nodes' accepted replies in this phase;
    ``num_partitions`` the number of per-client budgets when ``selection.budget`` is a list (a
    partition id must have one). ``required=False`` (``train`` replies) accepts a reply without the
    record and returns None.

    Raises
    ------
    Rejected
        ``client-info`` if the record is missing (when required) or malformed (a name or kind that is
        empty, longer than :data:`MAX_NAME_LENGTH` or not printable; a partition id below 0 or
        without a budget); ``identity`` if the node earlier called itself by another name or
        partition id, or another node took the name or the partition id in this phase.
    """
    if CLIENT not in content and not required:
        return None
    record = _record(content, CLIENT, ConfigRecord, "client-info")
    for key, kind in (("name", str), ("partition-id", int), ("kind", str)):
        if key not in record or isinstance(record[key], bool) or not isinstance(record[key], kind):
            raise Rejected("client-info", f"{key!r} missing or not a {kind.__name__}")
    if "labels" in record and not (
        isinstance(record["labels"], list) and all(isinstance(label, str) for label in record["labels"])
    ):
        raise Rejected("client-info", "'labels' is not a list of strings")
    info = ClientInfo.from_record(record)
    for key, text in (("name", info.name), ("kind", info.kind)):
        if not text or len(text) > MAX_NAME_LENGTH or not text.isprintable():
            raise Rejected(
                "client-info",
                f"{key} {printable(text, 60)!r} ({len(text)} characters) is not 1.."
                f"{MAX_NAME_LENGTH} printable characters",
            )
    if info.partition_id < 0:
        raise Rejected("client-info", f"partition id {info.partition_id} is negative")
    if num_partitions is not None and info.partition_id >= num_partitions:
        raise Rejected(
            "client-info",
            f"partition id {info.partition_id} has no budget: selection.budget gives "
            f"{num_partitions} (partition ids 0..{num_partitions - 1})",
        )
    before = known.get(node)
    if before is not None and (before.name, before.partition_id) != (info.name, info.partition_id):
        raise Rejected(
            "identity",
            f"node {node} was {before.name} (partition {before.partition_id}), "
            f"now says {info.name} (partition {info.partition_id})",
        )
    other = names_this_phase.get(info.name)
    if other is not None and other != node:
        raise Rejected("identity", f"name {info.name!r} is already used by node {other}")
    other = (partitions_this_phase or {}).get(info.partition_id)
    if other is not None and other != node:
        raise Rejected("identity", f"partition id {info.partition_id} is already used by node {other}")
    return info


def parse_scores_reply(content: RecordDict) -> ScoresReply:
    """The ``query`` reply's :class:`ScoresReply`, with its structure and example count checked.

    Raises
    ------
    Rejected
        ``scores-record`` (no ``scores`` MetricRecord: scores sent as strings arrive as a
        ConfigRecord), ``scores-keys`` (a key missing or not a list of numbers / a number),
        ``num-examples`` (not an integer in ``1..MAX_NUM_EXAMPLES``).
    """
    record = _record(content, SCORES, MetricRecord, "scores-record")
    lists = {}
    for key in (NORMALIZED, RAW):
        if key not in record:
            raise Rejected("scores-keys", f"no {key!r}")
        values = record[key]
        if not isinstance(values, list):
            raise Rejected("scores-keys", f"{key!r} is {type(values).__name__}, expected a list of numbers")
        lists[key] = tuple(float(v) for v in values)
    seconds = _number(record, SECONDS, "scores-keys")
    return ScoresReply(lists[NORMALIZED], lists[RAW], _num_examples(record), seconds)


def check_score_values(reply: ScoresReply, num_layers: int, budget: int) -> np.ndarray:
    """The normalised scores as the selector takes them, or :class:`Rejected`: ``scores`` (not
    ``num_layers`` finite, non-negative numbers, not all zero: :func:`check_scores`) or ``raw``
    (not ``num_layers`` finite numbers). Scores that do not sum to 1 (as an honest client's do) are
    rescaled to, so that no sum the selector forms can overflow."""
    try:
        values = check_scores(np.asarray(reply.normalized, dtype=float), num_layers, budget)
    except ValueError as error:
        raise Rejected("scores", str(error)) from None
    if abs(float(np.sum(values)) - 1.0) > 1e-6:  # honest scores sum to 1; scale others so that no sum overflows
        values = values / values.max()
        values = values / values.sum()
    raw = np.asarray(reply.raw, dtype=float)
    if raw.shape != (num_layers,) or not np.all(np.isfinite(raw)):
        raise Rejected("raw", f"expected {num_layers} finite raw scores, got {raw.size} ({raw.tolist()[:4]}...)")
    return values


def check_train_reply(
    content: RecordDict,
    client: str,
    assigned_keys: list[str],
    unit_keys: Iterable[str],
    global_state: Mapping[str, np.ndarray],
    reported_examples: int | None,
) -> PartialUpdate:
    """The ``train`` reply as a :class:`PartialUpdate` that may enter the average.

    ``assigned_keys`` are the units of the layers the client was told to train, ``unit_keys`` all
    trainable units, ``reported_examples`` the ``num-examples`` of its ``query`` reply this round
    (None if it sent none that parsed).

    Raises
    ------
    Rejected
        In this order: ``arrays-record``; ``metrics-record``; ``num-examples`` (not an integer in
        ``1..MAX_NUM_EXAMPLES``, or not the count of its ``query`` reply); ``train-loss`` (missing
        or not finite); ``size`` (more bytes than the assigned units take, checked before any
        array is read); ``unknown-keys`` (tensors that are no trainable unit); ``unassigned-keys``
        (units of layers it was not assigned); ``missing-keys``; ``array`` (unreadable);
        ``dtype`` and ``shape`` (other than the global unit's); ``finite`` (NaN or inf values);
        ``magnitude`` (a unit so large that an average of it could overflow in its dtype:
        :func:`~f3ocus_core.aggregation.check_magnitude`). Between ``train-loss`` and ``size``:
        ``train-metrics`` (``trainable-params``, ``train-gflop``, where present, not numbers of the
        right kind in range).
    """
    arrays = _record(content, ARRAYS, ArrayRecord, "arrays-record")
    num_examples = check_train_metrics(content, reported_examples)
    limit = sum(global_state[key].nbytes + NPY_HEADER_ALLOWANCE for key in assigned_keys)
    size = sum(len(array.data) for array in arrays.values())
    if size > limit:
        raise Rejected("size", f"{size} bytes of arrays, at most {limit} for its {len(assigned_keys)} assigned units")
    got, want, units = set(arrays), set(assigned_keys), set(unit_keys)
    for check, keys in (
        ("unknown-keys", got - units),
        ("unassigned-keys", (got & units) - want),
        ("missing-keys", want - got),
    ):
        if keys:
            raise Rejected(check, f"{len(keys)} tensors, e.g. {sorted(keys)[:2]}")
    state = {}
    for key, array in arrays.items():
        try:
            value = array.numpy()
        except Exception as error:  # untrusted bytes: whatever np.load raises means unreadable
            raise Rejected("array", f"{key!r} cannot be read ({type(error).__name__}: {error})") from None
        reference = global_state[key]
        if value.dtype != reference.dtype:
            raise Rejected("dtype", f"{key!r} is {value.dtype}, expected {reference.dtype}")
        if value.shape != reference.shape:
            raise Rejected("shape", f"{key!r} has shape {list(value.shape)}, expected {list(reference.shape)}")
        if not np.all(np.isfinite(value)):
            raise Rejected("finite", f"{key!r} holds NaN or inf")
        state[key] = value
    update = PartialUpdate(client, state, num_examples)
    try:
        check_magnitude(update)
    except ValueError as error:
        raise Rejected("magnitude", str(error)) from None
    try:
        validate_update(update, assigned_keys, global_state)  # the aggregation's own guard; passes by now
    except ValueError as error:
        raise Rejected("update", str(error)) from None
    return update


def check_train_metrics(content: RecordDict, reported_examples: int | None) -> int:
    """The example count of a ``train`` reply's METRICS record after its checks (those of
    :func:`check_train_reply` from ``metrics-record`` to ``train-metrics``; a ``secagg`` train
    reply, which carries no units, passes only these)."""
    metrics = _record(content, METRICS, MetricRecord, "metrics-record")
    num_examples = _num_examples(metrics)
    if reported_examples is not None and num_examples != reported_examples:
        raise Rejected("num-examples", f"{num_examples} in the train reply, {reported_examples} in its query reply")
    if abs(_number(metrics, TRAIN_LOSS, "train-loss")) > MAX_LOSS:
        raise Rejected("train-loss", f"{metrics[TRAIN_LOSS]} is beyond +-{MAX_LOSS:g}")
    _check_train_metrics(metrics)
    return num_examples


def _check_train_metrics(metrics: MetricRecord) -> None:
    """Raise :class:`Rejected` (``train-metrics``) if the optional counters of a train reply that
    the recorder writes are not what it can write: ``trainable-params`` an integer in
    ``0..MAX_TRAINABLE_PARAMS``, ``train-gflop`` a finite number in ``0..MAX_TRAIN_GFLOP``."""
    for key, integer, limit in ((TRAINABLE_PARAMS, True, MAX_TRAINABLE_PARAMS), (TRAIN_GFLOP, False, MAX_TRAIN_GFLOP)):
        if key not in metrics:
            continue
        value = metrics[key]
        kinds = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or not (0 <= value <= limit):
            raise Rejected(
                "train-metrics",
                f"{key!r} is {printable(repr(value), 60)}, expected "
                f"{'an integer' if integer else 'a number'} in 0..{limit:g}",
            )


def check_evaluate_reply(content: RecordDict) -> dict[str, float]:
    """The ``evaluate`` reply's metrics as the round's row takes them.

    Raises
    ------
    Rejected
        ``metrics-record``; ``num-examples``; ``metrics`` (``loss``, ``metric`` and ``accuracy``
        or ``f1`` present and finite, ``loss`` in ``0..MAX_LOSS``, the scores in [0, 1]).
    """
    record = _record(content, METRICS, MetricRecord, "metrics-record")
    metrics = {NUM_EXAMPLES: float(_num_examples(record))}
    for key in (LOSS, METRIC):
        metrics[key] = _number(record, key, "metrics")
    scores = [key for key in ("accuracy", "f1") if key in record]
    if not scores:
        raise Rejected("metrics", "neither 'accuracy' nor 'f1'")
    for key in scores:
        metrics[key] = _number(record, key, "metrics")
    if not 0 <= metrics[LOSS] <= MAX_LOSS:
        raise Rejected("metrics", f"loss {metrics[LOSS]} is outside 0..{MAX_LOSS:g}")
    for key in (METRIC, *scores):
        if not 0.0 <= metrics[key] <= 1.0:
            raise Rejected("metrics", f"{key} {metrics[key]} is outside [0, 1]")
    return metrics
