"""The server's side of secure aggregation (``secagg=true``): the train phase as SecAgg's four
exchanges, after which the server holds each layer's sum over the clients whose masked vectors
came, and no client's units.

1. ``train`` (the round's own message): each reply carries the client's two public keys (U1: the
   clients whose reply passed). The client keeps its clipped change.
2. ``share-keys``: every client of U1 gets U1's public keys and returns, per key holder, its
   Shamir shares of its private-mask seed and of its pairwise private key, encrypted to that holder
   (U2: the clients whose shares came).
3. ``masked-input``: every client of U2 gets the shares addressed to it and the union layout (every
   unit of a layer assigned to a client of U1) and returns its change over the layout, quantised
   and masked with its private mask and a pairwise mask per other client of U2 (U3: whose came).
4. ``unmask``: every client of U3 gets U3 and returns the seed shares of U3's clients and the
   key shares of U2's others; :func:`~f3ocus_flower.secure_sum.unmask_sum` then removes the masks.

A client that drops after sharing (in U2, not U3) has its pairwise masks removed through its key
shares; one that drops after its masked input (in U3, no ``unmask`` reply) has its private mask
removed through its seed shares, and its change counts. Each step needs at least
:func:`~f3ocus_flower.secure_sum.threshold_for` ``(|U1|)`` clients; with fewer the round aggregates
nothing and the global model stays as it was. Every reply is checked (:mod:`server_app.replies`
for its envelope and records, here for its SECAGG content) and a failing one is logged and left out
as in the clear round.

Flower's round loop hands ``aggregate_train`` no grid, so the strategy keeps the one of
``configure_train`` and :meth:`SecureAggregation._aggregate_secure` runs the three stages from
``aggregate_train``; to the loop (and to ``Strategy.start``) the round is still train then evaluate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import WARNING
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.supercore.primitives.asymmetric import bytes_to_public_key

from f3ocus_core.aggregation import capped_shares, coverage
from f3ocus_flower.protocol import (
    ARRAYS,
    CIPHERTEXTS,
    CONFIG,
    LAYOUT,
    MASKED_INPUT,
    METRICS,
    NODES,
    PUBLIC_KEYS,
    RUN_KEY,
    SECAGG,
    SECAGG_STAGE,
    SERVER_ROUND,
    SHARE_KEYS,
    SHARES,
    SURVIVORS,
    TRAIN_GFLOP,
    TRAIN_LOSS,
    TRAINABLE_PARAMS,
    UNMASK,
    scalar,
    state_to_record,
)
from f3ocus_flower.secure_sum import Layout, SecureSumParams, threshold_for, union_layout, unmask_sum
from server_app.replies import NPY_HEADER_ALLOWANCE, Rejected, Rejection, check_train_metrics

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from f3ocus_core.config import RunSettings
    from f3ocus_core.peft_units import UnitMap
    from server_app.round_state import StrategyState

#: The train phase's extra exchanges per round under ``secagg=true``.
STAGES = (SHARE_KEYS, MASKED_INPUT, UNMASK)

T = TypeVar("T")


class SecAggAborted(RuntimeError):
    """Too few clients are left at a step of the protocol (or the shares do not rebuild a secret)."""


def _content_bytes(content: RecordDict) -> int:
    """Bytes of a message's payload: its arrays and its SECAGG record (not its CONFIG)."""
    return sum(record.count_bytes() for key, record in content.items() if key in (ARRAYS, SECAGG))


def check_public_keys(content: RecordDict, taken: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The two public keys of a secagg ``train`` reply, or :class:`Rejected` (``secagg-keys``: missing,
    not an EC public key, or one another client sent: pairwise masks would then repeat)."""
    record = _secagg_record(content)
    keys = []
    for name in PUBLIC_KEYS:
        value = record.get(name)
        if not isinstance(value, bytes):
            raise Rejected("secagg-keys", f"no public key {name!r}")
        try:
            bytes_to_public_key(value)
        except Exception as error:  # untrusted bytes: whatever the parser raises means unusable
            raise Rejected("secagg-keys", f"{name!r} is not a public key ({type(error).__name__})") from None
        keys.append(value)
    used = {key for pair in taken for key in pair}
    if keys[0] == keys[1] or used & set(keys):
        raise Rejected("secagg-keys", "a public key already used")
    return keys[0], keys[1]


def check_shares(content: RecordDict, expected: list[int], key: str) -> dict[int, bytes]:
    """The SECAGG record's ``nodes`` and, under ``key``, one bytes value per node, as a dict; or
    :class:`Rejected` (``secagg-shares``) unless the nodes are distinct and those of ``expected``
    (all of them for ciphertexts; for revealed shares, a subset)."""
    record = _secagg_record(content)
    nodes, values = record.get(NODES), record.get(key)
    if not isinstance(nodes, list) or not isinstance(values, list) or len(nodes) != len(values):
        raise Rejected("secagg-shares", f"{NODES!r} and {key!r} must be lists of equal length")
    if not all(isinstance(node, int) and not isinstance(node, bool) for node in nodes) or not all(
        isinstance(value, bytes) for value in values
    ):
        raise Rejected("secagg-shares", f"{NODES!r} must hold node ids and {key!r} bytes")
    if (
        len(set(nodes)) != len(nodes)
        or not set(nodes) <= set(expected)
        or (key == CIPHERTEXTS and set(nodes) != set(expected))
    ):
        raise Rejected("secagg-shares", f"nodes {sorted(nodes)[:4]} are not the expected {sorted(expected)[:4]}")
    return {node: value for node, value in zip(nodes, values) if isinstance(node, int) and isinstance(value, bytes)}


def check_masked_input(content: RecordDict, layout: Layout, mod_range: int) -> list[np.ndarray]:
    """The masked vector of a ``masked-input`` reply in layout order, or :class:`Rejected`:
    ``size`` (before any array is read), ``masked-keys``, ``array``, ``masked-dtype``/``shape``
    (int64 of the layout's shapes), ``masked-range`` (values outside ``0..mod_range-1``)."""
    if ARRAYS not in content.array_records:
        raise Rejected("arrays-record", f"no {ARRAYS!r} ArrayRecord")
    arrays = content.array_records[ARRAYS]
    limit = sum(8 * int(np.prod(shape)) + NPY_HEADER_ALLOWANCE for _, shape in layout)
    size = sum(len(array.data) for array in arrays.values())
    if size > limit:
        raise Rejected("size", f"{size} bytes of arrays, at most {limit} for the layout")
    if set(arrays) != {key for key, _ in layout}:
        raise Rejected("masked-keys", f"{len(arrays)} tensors, not the layout's {len(layout)} units")
    vector = []
    for key, shape in layout:
        try:
            value = arrays[key].numpy()
        except Exception as error:  # untrusted bytes
            raise Rejected("array", f"{key!r} cannot be read ({type(error).__name__})") from None
        if value.dtype != np.int64 or value.shape != shape:
            raise Rejected("masked-shape", f"{key!r} is {value.dtype}{list(value.shape)}, expected int64{list(shape)}")
        if value.size and (value.min() < 0 or value.max() >= mod_range):
            raise Rejected("masked-range", f"{key!r} holds values outside 0..{mod_range - 1}")
        vector.append(value)
    return vector


def _secagg_record(content: RecordDict) -> ConfigRecord:
    if SECAGG not in content.config_records:
        raise Rejected("secagg-record", f"no {SECAGG!r} ConfigRecord")
    return content.config_records[SECAGG]


class SecureAggregation:
    """The ``secagg=true`` train phase of :class:`~server_app.strategy.F3ocusStrategy` (a mixin: it
    uses the strategy's settings, state, grid, screening and rejection log)."""

    if TYPE_CHECKING:  # what F3ocusStrategy, which this mixes into, provides
        settings: RunSettings
        units: UnitMap
        num_layers: int
        state: StrategyState
        timeout: float
        run_key: str
        _grid: Grid | None
        _train_sent_at: float

        def _reject(self, server_round: int, phase: str, rejection: Rejection, outcome: str = "") -> None: ...

        def _noised(self, before: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

        def _partition_order(self, node_id: int) -> tuple[int, int]: ...

        def _screened(
            self, server_round: int, phase: str, replies: Iterable[Message], sent: Iterable[int]
        ) -> list[Message]: ...

    def _aggregate_secure(
        self, server_round: int, screened: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The screened ``train`` replies' public keys, then the three stages; the new global units are
        each layer's sum over the clients whose masked vectors came, divided by their number (equal
        weights, as :func:`~f3ocus_core.privacy.equal_weight_clipped`), with DP noise if configured."""
        record = self.state.record
        publics: dict[int, tuple[bytes, bytes]] = {}
        examples: dict[int, int] = {}
        losses: dict[int, float] = {}
        for msg in screened:
            node = msg.metadata.src_node_id
            try:
                examples[node] = check_train_metrics(msg.content, self.state.reported_examples(node))
                publics[node] = check_public_keys(msg.content, publics.values())
            except Rejected as error:
                self._reject(server_round, MessageType.TRAIN, Rejection(node, error.check, error.detail))
                continue
            metrics = msg.content.metric_records[METRICS]
            losses[node] = float(scalar(metrics[TRAIN_LOSS]))
            if TRAINABLE_PARAMS in metrics and TRAIN_GFLOP in metrics:
                record.trainable_params[node] = int(scalar(metrics[TRAINABLE_PARAMS]))
                record.train_gflop[node] = float(scalar(metrics[TRAIN_GFLOP]))
            record.bytes_up[node] = _content_bytes(msg.content)
        try:
            sums, survivors = self._secure_sum(server_round, publics)
        except SecAggAborted as error:
            record.seconds_train = time.perf_counter() - self._train_sent_at
            record.coverage = [0] * self.num_layers
            log(
                WARNING,
                "Round %d: secure aggregation stopped (%s); the global model stays as it was.",
                server_round,
                error,
            )
            return None, None
        record.seconds_train = time.perf_counter() - self._train_sent_at
        counts = coverage([record.assignment[node] for node in survivors], self.num_layers)
        record.coverage = counts.tolist()
        before = self.state.global_units
        units = dict(before)
        for keys, count in zip(self.units.names, counts):
            for key in keys if count else ():
                units[key] = (before[key].astype(np.float64) + sums[key] / count).astype(before[key].dtype)
        self.state.global_units = units
        if self.settings.dp.updates:
            self.state.global_units = self._noised(before)
        shares = capped_shares([examples[node] for node in survivors], self.settings.aggregation_max_client_share)
        record.train_loss = float(sum(losses[node] * share for node, share in zip(survivors, shares)))
        return state_to_record(self.state.global_units), MetricRecord({TRAIN_LOSS: record.train_loss})

    def _secure_sum(
        self, server_round: int, publics: dict[int, tuple[bytes, bytes]]
    ) -> tuple[dict[str, np.ndarray], list[int]]:
        """Run share-keys, masked-input and unmask over the key holders ``publics``; return each
        layout unit's sum and the clients it covers (U3), in partition order."""
        holders = sorted(publics, key=self._partition_order)
        threshold = threshold_for(len(holders))
        if len(holders) < 2:
            raise SecAggAborted(f"{len(holders)} client sent keys; secure aggregation needs at least 2")
        params = SecureSumParams(clipping_range=self.settings.dp.clip_norm, threshold=threshold)
        shapes = {key: tuple(value.shape) for key, value in self.state.global_units.items()}
        layout = union_layout(self.units.names, {node: self.state.record.assignment[node] for node in holders}, shapes)

        keys = ConfigRecord(
            {
                NODES: holders,
                PUBLIC_KEYS[0]: [publics[n][0] for n in holders],
                PUBLIC_KEYS[1]: [publics[n][1] for n in holders],
            }
        )
        ciphertexts = self._secagg_exchange(
            server_round,
            SHARE_KEYS,
            {node: keys for node in holders},
            lambda content: check_shares(content, holders, CIPHERTEXTS),
        )
        shared = self._enough(holders, ciphertexts, threshold, "shared their keys")

        layout_keys = [key for key, _ in layout]
        requests = {
            node: ConfigRecord(
                {NODES: shared, CIPHERTEXTS: [ciphertexts[sender][node] for sender in shared], LAYOUT: layout_keys}
            )
            for node in shared
        }
        masked = self._secagg_exchange(
            server_round, MASKED_INPUT, requests, lambda content: check_masked_input(content, layout, params.mod_range)
        )
        survivors = self._enough(shared, masked, threshold, "sent a masked input")

        request = ConfigRecord({SURVIVORS: survivors})
        revealed = self._secagg_exchange(
            server_round,
            UNMASK,
            {node: request for node in survivors},
            lambda content: check_shares(content, shared, SHARES),
        )
        self._enough(survivors, revealed, threshold, "revealed their shares")
        try:
            sums = unmask_sum(masked, list(revealed.values()), {node: publics[node] for node in shared}, layout, params)
        except Exception as error:  # shares that do not rebuild a key: garbage from some client
            raise SecAggAborted(
                f"the revealed shares do not unmask the sum: {type(error).__name__}: {str(error)[:200]}"
            ) from None
        return sums, survivors

    def _secagg_exchange(
        self, server_round: int, stage: str, requests: Mapping[int, ConfigRecord], check: Callable[[RecordDict], T]
    ) -> dict[int, T]:
        """Send each node its SECAGG ``request`` as a ``train`` message of ``stage``; return, per node
        whose reply passes the screening and ``check``, what ``check`` returned. A failing reply is
        logged and noted as the train phase's; payload bytes count as the train phase's too."""
        record = self.state.record
        messages = []
        for node, request in requests.items():
            config = ConfigRecord({SERVER_ROUND: server_round, SECAGG_STAGE: stage, RUN_KEY: self.run_key})
            content = RecordDict({CONFIG: config, SECAGG: request})
            record.count_down(MessageType.TRAIN, node, _content_bytes(content))
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        if self._grid is None:
            raise RuntimeError("secagg: the stages need the grid of configure_train; call it before aggregate_train.")
        replies = self._grid.send_and_receive(messages, timeout=self.timeout)
        checked = {}
        for msg in self._screened(server_round, MessageType.TRAIN, replies, list(requests)):
            node = msg.metadata.src_node_id
            record.bytes_up[node] = record.bytes_up.get(node, 0) + _content_bytes(msg.content)
            try:
                checked[node] = check(msg.content)
            except Rejected as error:
                self._reject(server_round, MessageType.TRAIN, Rejection(node, error.check, f"{stage}: {error.detail}"))
        return checked

    def _enough(self, asked: list[int], answered: Mapping[int, object], threshold: int, what: str) -> list[int]:
        """The clients of ``asked`` (in their order) that ``answered``, if at least ``threshold``."""
        kept = [node for node in asked if node in answered]
        if len(kept) < threshold:
            raise SecAggAborted(f"{len(kept)} of {len(asked)} clients {what}, {threshold} needed")
        return kept
