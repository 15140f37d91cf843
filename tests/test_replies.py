"""Malformed replies and stragglers (issue 12, items 3 and 4), against the F3OCUS strategy.

The table runs Flower's whole round loop (``F3ocusStrategy.start``: round-0 evaluation and scoring,
then two rounds of select, train, aggregate, evaluate and score) over an :class:`InProcessGrid` whose three
clients answer with deterministic mock replies on a 3-layer unit map, so each run takes
milliseconds. For each case one reply is tampered with; the same run with that reply dropped (or,
for a duplicate or a stranger's reply, the honest run; for unusable scores, the run in which that
client's scores are withheld from the selection) is the reference. Each case must be rejected with
a logged reason naming the client and the check, leave the global state bit-identical to the
reference, and let the run finish. ``test_malformed_replies_through_the_server_app`` repeats a
few cases through the real ServerApp and ClientApp.
"""

from __future__ import annotations

import io
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from f3ocus_core.config import parse_run_config
from f3ocus_core.importance import SCORERS
from f3ocus_core.peft_units import UnitMap
from f3ocus_core.recorder import RunRecorder
from f3ocus_core.selection import ALGORITHMS
from f3ocus_flower.protocol import (
    ARRAYS,
    CLIENT,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    SCORE_ROUND,
    SCORES,
    SERVER_ROUND,
    TRAIN_LOSS,
    ClientInfo,
    ScoresReply,
    record_to_state,
    state_to_record,
)
from server_app.replies import MAX_NUM_EXAMPLES
from server_app.round_state import ClientScores
from server_app.strategy import F3ocusStrategy
from tests.inprocess_grid import InProcessGrid

ROOT = Path(__file__).resolve().parents[1]
UNITS = UnitMap((("layer.0.a", "layer.0.b"), ("layer.1.a",), ("layer.2.a",)))
GLOBAL = {
    "layer.0.a": np.arange(4, dtype=np.float32).reshape(2, 2),
    "layer.0.b": np.ones(3, np.float32),
    "layer.1.a": np.full(2, 2.0, np.float32),
    "layer.2.a": np.linspace(0, 1, 4, dtype=np.float32),
}
SCORES_OF = {0: [0.5, 0.3, 0.2], 1: [0.2, 0.3, 0.5], 2: [0.1, 0.6, 0.3]}
NODE = 2  # the tampered client: partition 1, budget 2 of 3 layers, named "client/1"
NAME = "client/1"
ROUNDS = 2
TIMEOUT = 5.0
QUERY, TRAIN, EVALUATE = MessageType.QUERY, MessageType.TRAIN, MessageType.EVALUATE


# ---------------------------------------------------------------- honest mock clients


def _partition(context) -> int:
    return int(context.node_config["partition-id"])


def _round(msg: Message) -> int:
    return int(msg.content.config_records[CONFIG][SERVER_ROUND])


def _info(context, labels: bool = True) -> ConfigRecord:
    p = _partition(context)
    return ClientInfo(f"client/{p}", p, "vqa", ("yes", "no") if labels else None).to_record()


def _examples(context) -> int:
    return 8 * (_partition(context) + 1)


def _scores(context, score_round: int) -> MetricRecord:
    scores = np.roll(SCORES_OF[_partition(context)], score_round)
    return ScoresReply(tuple(scores), tuple(10 * scores), _examples(context), 0.1).to_record()


def honest_query(msg: Message, context) -> Message:
    return Message(RecordDict({SCORES: _scores(context, _round(msg)), CLIENT: _info(context)}), reply_to=msg)


def honest_train(msg: Message, context) -> Message:
    p, r = _partition(context), _round(msg)
    state = record_to_state(msg.content.array_records[ARRAYS])
    trained = {
        key: (value * np.float32(1 + 0.01 * (p + 1)) + np.float32(0.1 * (p + r))).astype(value.dtype)
        for key, value in state.items()
    }
    metrics = MetricRecord({NUM_EXAMPLES: _examples(context), TRAIN_LOSS: 1.0 / (p + 1), "steps": 1, "seconds": 0.01})
    return Message(
        RecordDict({ARRAYS: state_to_record(trained), METRICS: metrics, CLIENT: _info(context, False)}), reply_to=msg
    )


def honest_evaluate(msg: Message, context) -> Message:
    p = _partition(context)
    mean = float(np.mean([value.mean() for value in record_to_state(msg.content.array_records[ARRAYS]).values()]))
    metric = (p + 1) / (p + 2 + abs(mean))
    metrics = MetricRecord({"loss": abs(mean) + p, "accuracy": metric, "metric": metric, NUM_EXAMPLES: 4 * (p + 1)})
    content = RecordDict({METRICS: metrics, CLIENT: _info(context)})
    if SCORE_ROUND in msg.content.config_records[CONFIG]:
        content[SCORES] = _scores(context, int(msg.content.config_records[CONFIG][SCORE_ROUND]))
    return Message(content, reply_to=msg)


HANDLERS = {QUERY: honest_query, TRAIN: honest_train, EVALUATE: honest_evaluate}


class _Recorder(RunRecorder):
    """The run recorder without its figures (they cost more than the rest of a mock run)."""

    def record_selection(self, server_round, clients, record, result, own_masks) -> None:
        self._append("selection.jsonl", {"round": server_round, "clients": clients, **record})

    def _plot_assignments(self) -> None:
        pass

    def _plot_metric(self) -> None:
        pass


class _Withholding(F3ocusStrategy):
    """The reference for unusable scores: the scores node ``withhold[1]`` sends with its evaluation of
    round ``withhold[0]`` never reach the selection (nor become its last valid ones)."""

    withhold: tuple[int, int] = (0, 0)

    def _keep_scores(self, server_round, phase, msg) -> None:
        node = msg.metadata.src_node_id
        last = self.state.last_valid_scores.get(node)
        super()._keep_scores(server_round, phase, msg)
        if (server_round, node) == self.withhold and node in self.state.scores:
            self.state.scores[node] = ClientScores(self.state.scores[node].reply, None)
            if last is None:
                self.state.last_valid_scores.pop(node, None)
            else:
                self.state.last_valid_scores[node] = last


@pytest.fixture(scope="module")
def settings():
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update(
        {
            "selection.budget": "1,2,1",
            "round-timeout": TIMEOUT,
            "selection.algorithm": "exact",
            "num-server-rounds": ROUNDS,
        }
    )
    return parse_run_config(config, SCORERS, ALGORITHMS)


@dataclass
class Run:
    strategy: F3ocusStrategy
    rows: list[dict]
    grid: InProcessGrid

    def state(self) -> dict[str, bytes]:
        units = self.strategy.state.global_units
        return {key: value.tobytes() + str(value.dtype).encode() for key, value in units.items()}

    def failed(self) -> list[tuple[int, str, str, str]]:
        return sorted(
            (row["round"], f["phase"], f["client"], f["reason"].split(":")[0])
            for row in self.rows
            for f in row["failed"]
        )

    def outcome(self) -> list[dict]:
        keys = (
            "round",
            "metric",
            "metric_per_client",
            "loss",
            "accuracy",
            "train_loss",
            "assignment",
            "coverage",
            "bytes_up",
        )
        return [{key: row.get(key) for key in keys} for row in self.rows]


def run(out: Path, settings, handlers=None, delay=None, fail=None, withhold: tuple[int, int] | None = None) -> Run:
    """Flower's round loop of the strategy over three mock clients; ``withhold`` (round, node) runs
    :class:`_Withholding` instead."""
    grid = InProcessGrid({}, handlers or HANDLERS, 3, fail=fail, delay=delay)
    strategy = (_Withholding if withhold else F3ocusStrategy)(settings, UNITS, _Recorder(out, ["0", "1", "2"]))
    if withhold:
        strategy.withhold = withhold
    strategy.start(grid, state_to_record(GLOBAL), ROUNDS, timeout=TIMEOUT)
    return Run(strategy, strategy.recorder.rows, grid)


# ---------------------------------------------------------------- the malformed replies

Tamper = Callable[[Message, Message], Message | list[Message]]


@dataclass(frozen=True)
class Case:
    id: str
    phase: str
    round: int
    tamper: Tamper
    check: str
    reference: str = "drop"  # "drop": that reply dropped; "honest": no change; "withheld": scores withheld
    client: str = NAME


def _content(reply: Message, **records) -> RecordDict:
    """The reply's records with ``records`` replacing them (None removes one)."""
    content = {key: value for key, value in reply.content.items()}
    for key, value in records.items():
        key = {"scores": SCORES, "arrays": ARRAYS, "metrics": METRICS, "client": CLIENT}[key]
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    return RecordDict(content)


def records(**records) -> Tamper:
    return lambda request, reply: Message(_content(reply, **records), reply_to=request)


def metric(record_key: str, **changes) -> Tamper:
    """Change (None: remove) keys of the reply's MetricRecord ``record_key``; ``num_examples`` is ``num-examples``."""

    def tamper(request: Message, reply: Message) -> Message:
        values = dict(reply.content[record_key])
        for key, value in changes.items():
            key = key.replace("_", "-")
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value(values) if callable(value) else value
        return Message(_content(reply, **{_short(record_key): MetricRecord(values)}), reply_to=request)

    return tamper


def _short(record_key: str) -> str:
    return {SCORES: "scores", METRICS: "metrics"}[record_key]


def scores(**changes) -> Tamper:
    return metric(SCORES, **changes)


def metric_values(**changes) -> Tamper:
    return metric(METRICS, **changes)


def client_info(**changes) -> Tamper:
    def tamper(request: Message, reply: Message) -> Message:
        values = dict(reply.content[CLIENT])
        values.update({key.replace("_", "-"): value for key, value in changes.items()})
        return Message(_content(reply, client=ConfigRecord(values)), reply_to=request)

    return tamper


def arrays(change: Callable[[dict[str, Array], Message], dict[str, Array]]) -> Tamper:
    """Rewrite the reply's ArrayRecord: ``change(arrays by key, request)`` returns the new ones."""

    def tamper(request: Message, reply: Message) -> Message:
        new = change(dict(reply.content[ARRAYS].items()), request)
        return Message(_content(reply, arrays=ArrayRecord(new)), reply_to=request)

    return tamper


def first(change: Callable[[np.ndarray], np.ndarray]) -> Tamper:
    """Apply ``change`` to the first array of the reply."""

    def rewrite(values: dict[str, Array], _: Message) -> dict[str, Array]:
        key = next(iter(values))
        return {**values, key: Array(np.ascontiguousarray(change(values[key].numpy())))}

    return arrays(rewrite)


def _set(array: np.ndarray, index: int, value: float) -> np.ndarray:
    array = array.copy()
    array.flat[index] = value
    return array


def unassigned(values: dict[str, Array], _: Message) -> dict[str, Array]:
    key = next(key for key in UNITS.all_keys() if key not in values)
    return {**values, key: Array(GLOBAL[key] + 1)}


def only_unassigned(values: dict[str, Array], request: Message) -> dict[str, Array]:
    return {key: Array(GLOBAL[key] + 1) for key in UNITS.all_keys() if key not in values}


def drop_one(values: dict[str, Array], _: Message) -> dict[str, Array]:
    return dict(list(values.items())[1:])


def extra(values: dict[str, Array], _: Message) -> dict[str, Array]:
    return {**values, "classifier.weight": Array(np.ones(3, np.float32))}


def huge(under: str) -> Callable:
    def rewrite(values: dict[str, Array], _: Message) -> dict[str, Array]:
        key = next(iter(values)) if under == "assigned" else "padding"
        return {**values, key: Array(np.zeros(1_000_000, np.float32))}

    return rewrite


def garbage(values: dict[str, Array], _: Message) -> dict[str, Array]:
    key = next(iter(values))
    return {**values, key: Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=b"\x93NUMPY garbage")}


def pickled(values: dict[str, Array], _: Message) -> dict[str, Array]:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    key = next(iter(values))
    return {**values, key: Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())}


def error(request: Message, reply: Message) -> Message:
    return Message(Error(code=0, reason="client crashed"), reply_to=request)


def duplicate(then: Tamper) -> Tamper:
    """The honest reply, then a second one from the same node (tampered by ``then``)."""
    return lambda request, reply: [reply, then(request, reply)]


def same(request: Message, reply: Message) -> Message:
    return Message(_content(reply), reply_to=request)


def stranger(node: int) -> Tamper:
    """The honest reply, plus a copy of it that claims to come from ``node``, which was sent nothing."""

    def tamper(request: Message, reply: Message) -> list[Message]:
        fake_request = Message(RecordDict(), message_type=request.metadata.message_type, dst_node_id=node)
        return [reply, Message(_content(reply), reply_to=fake_request)]

    return tamper


def retyped(kind: str) -> Tamper:
    def tamper(request: Message, reply: Message) -> Message:
        msg = Message(_content(reply), reply_to=request)
        msg.metadata.message_type = kind
        return msg

    return tamper


def _strings(request: Message, reply: Message) -> Message:
    values = dict(reply.content[SCORES])
    as_strings = ConfigRecord(
        {key: [str(v) for v in value] if isinstance(value, list) else value for key, value in values.items()}
    )
    return Message(_content(reply, scores=as_strings), reply_to=request)


W, H, D = "withheld", "honest", "drop"
CASES = [
    # scores sent with an evaluation (rounds 0 and 1, for rounds 1 and 2): unusable ones are withheld
    # from the selection; the client trains its fall-back layers
    Case("scores-nan", EVALUATE, 0, scores(scores=lambda v: [float("nan"), *v["scores"][1:]]), "scores", W),
    Case("scores-inf", EVALUATE, 0, scores(scores=lambda v: [float("inf"), *v["scores"][1:]]), "scores", W),
    Case("scores-minus-inf", EVALUATE, 1, scores(scores=lambda v: [*v["scores"][:2], -float("inf")]), "scores", W),
    Case("scores-negative", EVALUATE, 0, scores(scores=lambda v: [-0.1, *v["scores"][1:]]), "scores", W),
    Case("scores-all-zero", EVALUATE, 1, scores(scores=[0.0, 0.0, 0.0]), "scores", W),
    Case("scores-too-few", EVALUATE, 0, scores(scores=[0.5, 0.5]), "scores", W),
    Case("scores-too-many", EVALUATE, 0, scores(scores=[0.25, 0.25, 0.25, 0.25]), "scores", W),
    Case("scores-empty", EVALUATE, 1, scores(scores=[]), "scores", W),
    Case("scores-as-strings", EVALUATE, 0, _strings, "scores-record", W),
    Case("scores-not-a-list", EVALUATE, 0, scores(scores=0.5), "scores-keys", W),
    Case("scores-key-missing", EVALUATE, 0, scores(scores=None), "scores-keys", W),
    Case("raw-key-missing", EVALUATE, 1, scores(raw=None), "scores-keys", W),
    Case("seconds-key-missing", EVALUATE, 0, scores(seconds=None), "scores-keys", W),
    Case("scores-record-missing", EVALUATE, 0, records(scores=None), "scores-record", W),
    Case(
        "scores-as-arrays", EVALUATE, 1, records(scores=ArrayRecord({"scores": Array(np.ones(3))})), "scores-record", W
    ),
    Case("raw-nan", EVALUATE, 0, scores(raw=[float("nan"), 1.0, 1.0]), "raw", W),
    Case("raw-too-few", EVALUATE, 0, scores(raw=[1.0]), "raw", W),
    Case("scores-num-examples-zero", EVALUATE, 0, scores(num_examples=0), "num-examples", W),
    Case("scores-num-examples-negative", EVALUATE, 1, scores(num_examples=-8), "num-examples", W),
    Case("scores-num-examples-huge", EVALUATE, 0, scores(num_examples=MAX_NUM_EXAMPLES + 1), "num-examples", W),
    Case("scores-num-examples-float", EVALUATE, 0, scores(num_examples=16.5), "num-examples", W),
    Case("scores-num-examples-missing", EVALUATE, 1, scores(num_examples=None), "num-examples", W),
    # a scoring evaluation whose sender is in doubt: neither its metrics nor its scores count
    Case("scoring-eval-client-record-missing", EVALUATE, 1, records(client=None), "client-info"),
    Case(
        "scoring-eval-client-record-metrics",
        EVALUATE,
        1,
        records(client=MetricRecord({"partition-id": 1})),
        "client-info",
    ),
    Case("scoring-eval-client-name-not-str", EVALUATE, 1, client_info(name=7), "client-info"),
    Case("scoring-eval-partition-id-str", EVALUATE, 1, client_info(partition_id="1"), "client-info"),
    Case("scoring-eval-renamed", EVALUATE, 1, client_info(name="client/9"), "identity"),
    Case("scoring-eval-other-partition", EVALUATE, 1, client_info(partition_id=0), "identity"),
    Case("scoring-eval-duplicate", EVALUATE, 1, duplicate(scores(scores=[0.0, 0.0, 1.0])), "duplicate", H),
    Case("scoring-eval-unknown-node", EVALUATE, 1, stranger(99), "sender", H, "node-99"),
    Case("scoring-eval-wrong-type", EVALUATE, 1, retyped(QUERY), "type"),
    # train
    Case("train-nan", TRAIN, 1, first(lambda a: _set(a, 0, np.nan)), "finite"),
    Case("train-inf", TRAIN, 2, first(lambda a: _set(a, -1, np.inf)), "finite"),
    Case("train-minus-inf", TRAIN, 1, first(lambda a: _set(a, 0, -np.inf)), "finite"),
    Case("train-float64", TRAIN, 1, first(lambda a: a.astype(np.float64)), "dtype"),
    Case("train-float16", TRAIN, 2, first(lambda a: a.astype(np.float16)), "dtype"),
    Case("train-int32", TRAIN, 1, first(lambda a: a.astype(np.int32)), "dtype"),
    Case("train-shape-flat", TRAIN, 1, first(lambda a: a.reshape(-1, 1)), "shape"),
    Case("train-shape-short", TRAIN, 2, first(lambda a: a.reshape(-1)[:-1]), "shape"),
    Case("train-scalar", TRAIN, 1, first(lambda a: np.float32(1.0).reshape(())), "shape"),
    Case("train-unassigned-layer", TRAIN, 1, arrays(unassigned), "unassigned-keys"),
    Case("train-only-unassigned", TRAIN, 2, arrays(only_unassigned), "unassigned-keys"),
    Case("train-missing-tensor", TRAIN, 1, arrays(drop_one), "missing-keys"),
    Case("train-no-tensors", TRAIN, 1, arrays(lambda values, _: {}), "missing-keys"),
    Case("train-extra-tensor", TRAIN, 2, arrays(extra), "unknown-keys"),
    Case("train-huge-assigned", TRAIN, 1, arrays(huge("assigned")), "size"),
    Case("train-huge-extra", TRAIN, 2, arrays(huge("extra")), "size"),
    Case("train-unreadable", TRAIN, 1, arrays(garbage), "array"),
    Case("train-pickled-object", TRAIN, 2, arrays(pickled), "array"),
    Case("train-num-examples-zero", TRAIN, 1, metric_values(num_examples=0), "num-examples"),
    Case("train-num-examples-negative", TRAIN, 2, metric_values(num_examples=-16), "num-examples"),
    Case("train-num-examples-huge", TRAIN, 1, metric_values(num_examples=10**15), "num-examples"),
    Case("train-num-examples-not-as-queried", TRAIN, 1, metric_values(num_examples=17), "num-examples"),
    Case("train-num-examples-doubled", TRAIN, 2, metric_values(num_examples=32), "num-examples"),
    Case("train-num-examples-float", TRAIN, 1, metric_values(num_examples=16.0), "num-examples"),
    Case("train-num-examples-missing", TRAIN, 1, metric_values(num_examples=None), "num-examples"),
    Case("train-loss-nan", TRAIN, 2, metric_values(train_loss=float("nan")), "train-loss"),
    Case("train-loss-missing", TRAIN, 1, metric_values(train_loss=None), "train-loss"),
    Case("train-metrics-missing", TRAIN, 1, records(metrics=None), "metrics-record"),
    Case("train-metrics-as-config", TRAIN, 2, records(metrics=ConfigRecord({NUM_EXAMPLES: 16})), "metrics-record"),
    Case("train-arrays-missing", TRAIN, 1, records(arrays=None), "arrays-record"),
    Case("train-arrays-as-config", TRAIN, 1, records(arrays=ConfigRecord({"layer.1.a": 1.0})), "arrays-record"),
    Case("train-claims-other-name", TRAIN, 2, client_info(name="client/0"), "identity"),
    Case("train-error", TRAIN, 1, error, "error"),
    Case("train-error-round-2", TRAIN, 2, error, "error"),
    Case("train-duplicate-nan", TRAIN, 1, duplicate(first(lambda a: _set(a, 0, np.nan))), "duplicate", H),
    Case("train-duplicate-valid", TRAIN, 2, duplicate(first(lambda a: a + 5)), "duplicate", H),
    Case("train-duplicate-same", TRAIN, 1, duplicate(same), "duplicate", H),
    Case("train-unknown-node", TRAIN, 1, stranger(7), "sender", H, "node-7"),
    Case("train-wrong-type", TRAIN, 2, retyped(QUERY), "type"),
    # evaluate
    Case("eval-metric-nan", EVALUATE, 1, metric_values(metric=float("nan")), "metrics"),
    Case("eval-metric-above-one", EVALUATE, 2, metric_values(metric=3.0, accuracy=3.0), "metrics"),
    Case("eval-accuracy-negative", EVALUATE, 1, metric_values(accuracy=-0.5), "metrics"),
    Case("eval-loss-inf", EVALUATE, 1, metric_values(loss=float("inf")), "metrics"),
    Case("eval-loss-negative", EVALUATE, 2, metric_values(loss=-1.0), "metrics"),
    Case("eval-metric-missing", EVALUATE, 1, metric_values(metric=None), "metrics"),
    Case("eval-no-accuracy-or-f1", EVALUATE, 1, metric_values(accuracy=None), "metrics"),
    Case("eval-num-examples-zero", EVALUATE, 2, metric_values(num_examples=0), "num-examples"),
    Case("eval-num-examples-huge", EVALUATE, 1, metric_values(num_examples=10**12), "num-examples"),
    Case("eval-metrics-missing", EVALUATE, 1, records(metrics=None), "metrics-record"),
    Case("eval-client-record-missing", EVALUATE, 2, records(client=None), "client-info"),
    Case("eval-round-0-other-name", EVALUATE, 0, client_info(name="client/0"), "identity", D, "node-2"),
    Case("eval-round-0-error", EVALUATE, 0, error, "error", D, "node-2"),
    Case("eval-error", EVALUATE, 1, error, "error"),
    Case("eval-duplicate", EVALUATE, 2, duplicate(metric_values(metric=1.0, accuracy=1.0)), "duplicate", H),
    Case("eval-unknown-node", EVALUATE, 1, stranger(42), "sender", H, "node-42"),
    Case("eval-wrong-type", EVALUATE, 1, retyped(TRAIN), "type"),
]


def _tampered_handlers(case: Case) -> dict:
    def wrap(handler):
        def wrapped(msg: Message, context) -> Message | list[Message]:
            reply = handler(msg, context)
            if msg.metadata.dst_node_id == NODE and _round(msg) == case.round:
                return case.tamper(msg, reply)
            return reply

        return wrapped

    return {**HANDLERS, case.phase: wrap(HANDLERS[case.phase])}


@pytest.fixture(scope="module")
def references(settings, tmp_path_factory) -> Callable[[Case], Run]:
    """The reference run of a case, computed once per (kind, phase, round)."""
    cache: dict[tuple, Run] = {}

    def reference(case: Case) -> Run:
        key = (case.reference,) if case.reference == H else (case.reference, case.phase, case.round)
        if key not in cache:
            out = tmp_path_factory.mktemp("reference")
            if case.reference == H:
                cache[key] = run(out, settings)
            elif case.reference == W:
                cache[key] = run(out, settings, withhold=(case.round, NODE))
            else:
                late = (NODE, case.phase, case.round)
                cache[key] = run(out, settings, delay=lambda *call: 2 * TIMEOUT if call == late else 0.0)
        return cache[key]

    return reference


def test_the_table_holds_at_least_50_distinct_malformed_replies():
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids) >= 50
    assert {case.phase for case in CASES} == {TRAIN, EVALUATE}
    print(
        f"\n{len(CASES)} malformed-reply cases: "
        + ", ".join(f"{phase} {sum(c.phase == phase for c in CASES)}" for phase in (TRAIN, EVALUATE))
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_malformed_reply_is_rejected_by_name_and_changes_nothing(case, settings, references, tmp_path, caplog):
    reference = references(case)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        tampered = run(tmp_path, settings, handlers=_tampered_handlers(case))

    # The run went on to the end.
    assert [row["round"] for row in tampered.rows] == list(range(ROUNDS + 1))
    # Rejected with a logged reason naming the client and the check ...
    logged = [
        r.getMessage() for r in caplog.records if f"client {case.client} rejected [{case.check}]" in r.getMessage()
    ]
    assert len(logged) == 1 and f"Round {case.round}, {case.phase}:" in logged[0], caplog.text
    # ... noted in the round's record (metrics.jsonl "failed"), and nothing else changed there.
    expected = list(reference.failed())
    if case.reference == D:
        expected.remove((case.round, case.phase, case.client, "timeout"))
    expected = sorted([*expected, (case.round, case.phase, case.client, case.check)])
    assert tampered.failed() == expected
    # Nothing of it reached the average or the rows: bit-identical to the reference.
    assert tampered.state() == reference.state()
    assert tampered.outcome() == reference.outcome()


def test_references_differ_from_the_honest_run(settings, references):
    """The comparison above can fail: dropping a reply or withholding scores changes the result."""
    honest = references(Case("honest", TRAIN, 1, same, "", H))
    for phase, kind in ((TRAIN, D), (EVALUATE, W), (EVALUATE, D)):
        other = references(Case("x", phase, 1, same, "", kind))
        assert other.outcome() != honest.outcome(), (phase, kind)
        if (phase, kind) != (EVALUATE, D):
            assert other.state() != honest.state(), (phase, kind)


def test_withheld_scores_give_the_fallback_assignment(settings, references):
    """The "withheld" reference is the documented fall-back: the client trains its own top-b layers
    of its last valid scores (round 2) or a seeded random set (round 1)."""
    from f3ocus_core.selection import fallback_assignment

    for server_round in (1, 2):
        withheld = references(Case("x", EVALUATE, server_round - 1, same, "", W))
        got = withheld.rows[server_round]["assignment"][NAME]
        if server_round == 1:
            rng = np.random.default_rng(settings.seed * 7919 + 1)
            assert got == fallback_assignment(None, 2, 3, rng)
        else:
            last = np.roll(SCORES_OF[1], 1)
            assert got == fallback_assignment(last, 2, 3, np.random.default_rng(0))


# ---------------------------------------------------------------- stragglers


def test_a_straggler_is_left_out_of_that_rounds_average_and_takes_part_again(settings, tmp_path, caplog):
    def slow(node: int, kind: str, server_round: int) -> float:
        return 2 * TIMEOUT if (node, kind, server_round) == (NODE, TRAIN, 1) else 0.1

    with caplog.at_level(logging.WARNING, logger="flwr"):
        straggling = run(tmp_path / "slow", settings, delay=slow)
    honest = run(tmp_path / "honest", settings)

    assert straggling.grid.late == [(NODE, TRAIN, 1)]
    assert f"Round 1, train: reply of client {NAME} rejected [timeout]: no reply within round-timeout" in caplog.text
    first, second = straggling.rows[1], straggling.rows[2]
    assert [(f["phase"], f["client"], f["reason"]) for f in first["failed"]] == [
        (TRAIN, NAME, "timeout: no reply within round-timeout")
    ]
    assert NAME not in first["bytes_up"] and set(first["bytes_up"]) == {"client/0", "client/2"}
    assert NAME in second["bytes_up"] and not second["failed"]
    # Round 1 averages the other two clients only; in round 2 all three count again.
    others = [layers for name, layers in first["assignment"].items() if name != NAME]
    assert first["coverage"] == [sum(layer in layers for layers in others) for layer in range(3)]
    assert second["coverage"] == [
        sum(layer in layers for layers in second["assignment"].values()) for layer in range(3)
    ]
    assert straggling.state() != honest.state()


def test_a_client_that_fails_every_round_never_stops_the_run(settings, tmp_path):
    always = run(tmp_path / "fail", settings, fail=lambda node, kind, _: node == 3)
    late = run(tmp_path / "late", settings, delay=lambda node, kind, _: 2 * TIMEOUT if node == 3 else 0.0)

    for result, check in ((always, "error"), (late, "timeout")):
        assert [row["round"] for row in result.rows] == list(range(ROUNDS + 1))
        # The server knows it only as its node; it never gets a train message, as it never replies.
        assert result.failed() == [(r, EVALUATE, "node-3", check) for r in range(ROUNDS + 1)]
        assert all(set(row["bytes_up"]) == {"client/0", "client/1"} for row in result.rows[1:])
    assert always.state() == late.state() and always.outcome() == late.outcome()


def test_a_run_stops_only_when_no_client_answers(settings, tmp_path):
    with pytest.raises(RuntimeError, match="No client could evaluate the starting model"):
        run(tmp_path, settings, fail=lambda *_: True)


# ---------------------------------------------------------------- through the real ServerApp


def _bits(state: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {key: value.tobytes() + str(value.dtype).encode() for key, value in state.items()}


def _spy_and_tamper(tampers: dict, seen: dict) -> dict:
    """``wrap`` for :func:`run_server_app`: remember what each node was sent and answered
    (``seen[(kind, node, round)] = (request, reply)``) and apply ``tampers[(kind, node, round)]``."""

    def wrap(kind: str):
        def decorate(handler):
            def wrapped(msg: Message, context) -> Message | list[Message]:
                reply = handler(msg, context)
                key = (kind, msg.metadata.dst_node_id, _round(msg))
                seen[key] = (msg, reply)
                return tampers[key](msg, reply) if key in tampers else reply

            return wrapped

        return decorate

    return {kind: wrap(kind) for kind in (QUERY, TRAIN, EVALUATE)}


def _only_client_1_counted(seen: dict, last_round: int) -> None:
    """The global units after round 1 (sent with round 1's evaluation) are those of a
    run without node 2's round-1 update: node 1's update on its layers (a layer, or LoRA module,
    trained by one client keeps that client's values bit for bit), the old units elsewhere."""
    before = record_to_state(seen[(EVALUATE, 1, 0)][0].content[ARRAYS])
    update = record_to_state(seen[(TRAIN, 1, 1)][1].content[ARRAYS])
    after = record_to_state(seen[(EVALUATE, 1, 1)][0].content[ARRAYS])
    assert _bits(after) == _bits({**before, **update})
    assert _bits(after) != _bits(before)


def test_malformed_replies_through_the_server_app(small_run_config, tmp_path, caplog):
    """Round 1 of the real ServerApp and ClientApp on two clients, where every phase also gets a
    duplicate and a stranger's reply, client 1's update holds a NaN and its evaluation an accuracy
    of 3: each is rejected by name and check, and the global units are bit for bit those of the run
    without client 1's update."""
    from tests.inprocess_grid import run_server_app

    tampers = {
        (EVALUATE, 1, 0): lambda q, r: [*duplicate(scores(scores=[0.0, 0.0, 0.0, 1.0]))(q, r), *stranger(99)(q, r)[1:]],
        (TRAIN, 1, 1): lambda q, r: [*duplicate(first(lambda a: a + 5))(q, r), *stranger(7)(q, r)[1:]],
        (TRAIN, 2, 1): first(lambda a: _set(a, 0, np.nan)),
        (EVALUATE, 1, 1): lambda q, r: [*duplicate(same)(q, r), *stranger(42)(q, r)[1:]],
        (EVALUATE, 2, 1): metric_values(metric=3.0, accuracy=3.0),
    }
    seen: dict = {}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, rows = run_server_app(
            dict(_tiny(small_run_config), **{"num-server-rounds": 1}), num_nodes=2, wrap=_spy_and_tamper(tampers, seen)
        )

    c0, c1 = "easy-vqa/0", "easy-vqa/1"
    expected = [
        (1, EVALUATE, c0, "duplicate"),
        (1, EVALUATE, c1, "metrics"),
        (1, EVALUATE, "node-42", "sender"),
        (0, EVALUATE, "node-1", "duplicate"),
        (0, EVALUATE, "node-99", "sender"),
        (1, TRAIN, c0, "duplicate"),
        (1, TRAIN, c1, "finite"),
        (1, TRAIN, "node-7", "sender"),
    ]
    assert sorted(
        (row["round"], f["phase"], f["client"], f["reason"].split(":")[0]) for row in rows for f in row["failed"]
    ) == sorted(expected)
    for server_round, phase, client, check in expected:
        assert f"Round {server_round}, {phase}: reply of client {client} rejected [{check}]" in caplog.text
    print(f"\n{len(expected)} malformed replies through the ServerApp")
    assert [row["round"] for row in rows] == [0, 1] and set(rows[1]["bytes_up"]) == {c0}
    _only_client_1_counted(seen, 1)
    honest = seen[(EVALUATE, 1, 1)][1].content[METRICS]
    assert rows[1]["metric_per_client"] == {c0: honest["metric"]}
    assert rows[1]["coverage"] == [int(layer in rows[1]["assignment"][c0]) for layer in range(4)]


def test_a_straggler_through_the_server_app(small_run_config, caplog):
    """Client 2's train reply of round 1 comes after ``round-timeout``: round 1 averages client 1
    alone, bit for bit; in round 2 client 2 takes part again."""
    from tests.inprocess_grid import run_server_app

    def late(node: int, kind: str, server_round: int) -> float:
        return 120.0 if (node, kind, server_round) == (2, TRAIN, 1) else 1.0

    seen: dict = {}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        grid, rows = run_server_app(_tiny(small_run_config), num_nodes=2, delay=late, wrap=_spy_and_tamper({}, seen))

    c0, c1 = "easy-vqa/0", "easy-vqa/1"
    assert grid.late == [(2, TRAIN, 1)]
    assert "Round 1, train: reply of client easy-vqa/1 rejected [timeout]: no reply within round-timeout" in caplog.text
    assert [(row["round"], f["phase"], f["client"], f["reason"]) for row in rows for f in row["failed"]] == [
        (1, TRAIN, c1, "timeout: no reply within round-timeout")
    ]
    _only_client_1_counted(seen, 1)
    assert set(rows[1]["bytes_up"]) == {c0} and set(rows[2]["bytes_up"]) == {c0, c1}
    assert set(rows[2]["metric_per_client"]) == {c0, c1}


def _tiny(config: dict) -> dict:
    """The small run config, smaller: a step of training, a few examples, the exact selector."""
    return dict(
        config,
        **{
            "data.max-train-per-client": 8,
            "data.max-test-per-client": 8,
            "train.max-steps": 1,
            "train.local-epochs": 1,
            "scoring.batch-size": 4,
            "eval.batch-size": 8,
            "selection.algorithm": "exact",
            "round-timeout": 60.0,
        },
    )
