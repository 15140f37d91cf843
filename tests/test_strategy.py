"""Each method of the F3OCUS strategy against mock client replies, in process (no Flower runtime,
no model): a 3-layer unit map, an in-process grid whose clients answer with made-up records."""

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from f3ocus_core.config import parse_run_config
from f3ocus_core.importance import SCORERS
from f3ocus_core.peft_units import UnitMap
from f3ocus_core.recorder import RoundRecord, RunRecorder
from f3ocus_core.selection import ALGORITHMS, fallback_assignment
from f3ocus_flower.protocol import (
    ARRAYS,
    CLIENT,
    CONFIG,
    LAYERS,
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
from server_app.strategy import F3ocusStrategy
from tests.inprocess_grid import InProcessGrid

ROOT = Path(__file__).resolve().parents[1]
UNITS = UnitMap((("layer.0.a", "layer.0.b"), ("layer.1.a",), ("layer.2.a",)))
GLOBAL = {
    "layer.0.a": np.zeros((2, 2), np.float32),
    "layer.0.b": np.ones(3, np.float32),
    "layer.1.a": np.full(2, 2.0, np.float32),
    "layer.2.a": np.full(4, 3.0, np.float32),
}


@pytest.fixture()
def strategy(tmp_path) -> F3ocusStrategy:
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update({"selection.budget": "1,2,1", "round-timeout": 5.0, "selection.algorithm": "exact"})
    settings = parse_run_config(config, SCORERS, ALGORITHMS)
    strategy = F3ocusStrategy(settings, UNITS, RunRecorder(tmp_path, ["0", "1", "2"]))
    strategy.state.global_units = dict(GLOBAL)
    return strategy


def _info(context) -> ClientInfo:
    partition = int(context.node_config["partition-id"])
    return ClientInfo(f"client/{partition}", partition, "vqa", ("yes", "no"))


def _grid(scores_by_partition: dict[int, list[float] | None], seen: list[Message] | None = None) -> InProcessGrid:
    """Three clients whose partitions run opposite to their node ids (node 1 holds partition 2);
    each answers ``evaluate`` with fixed metrics and, when asked (``score-round``), the given
    scores, and ``query`` with the scores; a client whose scores are None fails both."""

    def scores_record(context) -> MetricRecord:
        scores = scores_by_partition[int(context.node_config["partition-id"])]
        if scores is None:
            raise RuntimeError("scorer crashed")
        return ScoresReply(tuple(scores), tuple(10 * s for s in scores), 8, 0.1).to_record()

    def evaluate(msg: Message, context) -> Message:
        if seen is not None:
            seen.append(msg)
        content = RecordDict(
            {
                METRICS: MetricRecord({"loss": 1.0, "accuracy": 0.5, "metric": 0.5, NUM_EXAMPLES: 4}),
                CLIENT: _info(context).to_record(),
            }
        )
        if SCORE_ROUND in msg.content.config_records[CONFIG]:
            content[SCORES] = scores_record(context)
        return Message(content, reply_to=msg)

    def query(msg: Message, context) -> Message:
        if seen is not None:
            seen.append(msg)
        return Message(RecordDict({SCORES: scores_record(context), CLIENT: _info(context).to_record()}), reply_to=msg)

    grid = InProcessGrid({}, {MessageType.EVALUATE: evaluate, MessageType.QUERY: query}, 3)
    for node, context in grid.contexts.items():
        context.node_config["partition-id"] = 3 - node
    return grid


def _scores_for(strategy: F3ocusStrategy, server_round: int, grid: InProcessGrid) -> None:
    """Round ``server_round - 1``'s evaluate exchange, which brings the scores of ``server_round``."""
    strategy.state.record = RoundRecord(server_round - 1)
    messages = strategy.configure_evaluate(server_round - 1, state_to_record(GLOBAL), ConfigRecord(), grid)
    strategy.aggregate_evaluate(server_round - 1, grid.send_and_receive(messages, timeout=5.0))


def _reply(node: int, kind: str, content: RecordDict) -> Message:
    return Message(content, reply_to=Message(RecordDict(), message_type=kind, dst_node_id=node))


def _error(node: int, kind: str) -> Message:
    request = Message(RecordDict(), message_type=kind, dst_node_id=node)
    return Message(Error(code=0, reason="client crashed"), reply_to=request)


GOOD = {0: [0.5, 0.3, 0.2], 1: [0.2, 0.3, 0.5], 2: [0.1, 0.6, 0.3]}


def test_evaluate_asks_every_client_for_the_next_rounds_scores_and_keeps_good_ones(strategy):
    seen: list[Message] = []
    grid = _grid({**GOOD, 1: None}, seen)
    _scores_for(strategy, 2, grid)

    assert grid.calls == [(1, MessageType.EVALUATE), (2, MessageType.EVALUATE), (3, MessageType.EVALUATE)]
    assert all(m.content.config_records[CONFIG][SCORE_ROUND] == 2 for m in seen)
    assert all(set(m.content.array_records[ARRAYS]) == set(GLOBAL) for m in seen)
    assert sorted(strategy.state.scores) == [1, 3]  # node 2 (partition 1) failed its evaluation
    np.testing.assert_allclose(strategy.state.scores[3].values, GOOD[0])
    assert strategy.state.reported_examples(3) == 8 and strategy.state.reported_examples(2) is None
    assert strategy.state.record.bytes_down["query"] == strategy.state.record.bytes_down["train"] == {}
    assert [(f["phase"], f["client"]) for f in strategy.state.record.failed] == [("evaluate", "node-2")]


def test_the_last_rounds_evaluate_scores_nothing(strategy):
    seen: list[Message] = []
    _scores_for(strategy, strategy.settings.num_rounds + 1, _grid(GOOD, seen))
    assert len(seen) == 3 and not any(SCORE_ROUND in m.content.config_records[CONFIG] for m in seen)
    assert strategy.state.scores == {}


def test_a_resumed_runs_query_keeps_the_scores_as_an_evaluation_does(strategy):
    seen: list[Message] = []
    grid = _grid({**GOOD, 1: None}, seen)
    arrays = state_to_record(GLOBAL)
    strategy.query_scores(4, arrays, grid)

    assert grid.calls == [(1, MessageType.QUERY), (2, MessageType.QUERY), (3, MessageType.QUERY)]
    assert all(m.content.config_records[CONFIG][SERVER_ROUND] == 4 for m in seen)
    assert sorted(strategy.state.scores) == [1, 3]
    assert strategy.state.record.server_round == 4
    assert strategy.state.record.bytes_down["query"] == {node: arrays.count_bytes() for node in (1, 2, 3)}
    assert [(f["phase"], f["client"]) for f in strategy.state.record.failed] == [("query", "node-2")]


def test_assign_keeps_each_partitions_budget_and_orders_clients_by_partition(strategy, tmp_path):
    _scores_for(strategy, 1, _grid(GOOD))
    assignment = strategy.assign(1, [1, 2, 3])

    assert list(assignment) == [3, 2, 1]  # nodes in partition order 0, 1, 2
    assert [len(assignment[node]) for node in (3, 2, 1)] == [1, 2, 1]  # budget "1,2,1" by partition
    record = json.loads((tmp_path / "selection.jsonl").read_text().splitlines()[0])
    assert record["scored_clients"] == ["client/0", "client/1", "client/2"] and record["invalid_clients"] == []
    np.testing.assert_allclose(record["scores"], [GOOD[0], GOOD[1], GOOD[2]])
    assert [sorted(layers) for layers in record["layers"]] == [assignment[node] for node in (3, 2, 1)]
    assert (tmp_path / "labels" / "client_0.json").exists()


def test_unusable_scores_get_the_fallback_own_top_b_or_a_seeded_random_set(strategy, tmp_path):
    _scores_for(strategy, 1, _grid({**GOOD, 0: [0.0, 0.0, 0.0]}))
    first = strategy.assign(1, [1, 2, 3])
    # Partition 0 (node 3) never sent usable scores: a random set drawn from the round's seed.
    rng = np.random.default_rng(strategy.settings.seed * 7919 + 1)
    assert first[3] == fallback_assignment(None, 1, 3, rng)

    _scores_for(strategy, 2, _grid({**GOOD, 1: [0.5, np.nan, 0.5]}))
    second = strategy.assign(2, [1, 2, 3])
    assert second[2] == [1, 2]  # partition 1's own top-2 of its last valid scores [0.2, 0.3, 0.5]

    _scores_for(strategy, 3, _grid({**GOOD, 1: None}))  # partition 1 fails its evaluation: the same fall-back
    assert strategy.assign(3, [1, 2, 3])[2] == [1, 2]
    records = [json.loads(line) for line in (tmp_path / "selection.jsonl").read_text().splitlines()]
    assert records[0]["invalid_clients"] == ["client/0"] and records[1]["invalid_clients"] == ["client/1"]
    assert records[1]["scored_clients"] == records[2]["scored_clients"] == ["client/0", "client/2"]
    assert records[2]["invalid_clients"] == ["client/1"]


def test_assign_without_any_client_stops_the_round(strategy):
    with pytest.raises(RuntimeError, match="no client to train"):
        strategy.assign(1, [])


def test_configure_train_sends_nothing_and_gives_each_client_only_its_layers_units(strategy):
    grid = _grid(GOOD)
    _scores_for(strategy, 1, grid)
    grid.calls.clear()
    messages = list(strategy.configure_train(1, state_to_record(GLOBAL), ConfigRecord({"lr-scale": 0.5}), grid))

    assert grid.calls == []  # configure_train only builds messages
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3]
    for msg in messages:
        node = msg.metadata.dst_node_id
        layers = list(msg.content.config_records[CONFIG][LAYERS])
        assert msg.metadata.message_type == MessageType.TRAIN
        assert msg.content.config_records[CONFIG]["lr-scale"] == 0.5  # start()'s train_config travels
        assert layers == strategy.state.record.assignment[node]
        sent = record_to_state(msg.content.array_records[ARRAYS])
        assert list(sent) == UNITS.keys_of(layers)
        assert all(np.array_equal(sent[key], GLOBAL[key]) for key in sent)
        assert strategy.state.record.bytes_down["train"][node] == msg.content.array_records[ARRAYS].count_bytes()


def _update(node: int, state: dict[str, np.ndarray], examples: int, loss: float) -> Message:
    metrics = MetricRecord({NUM_EXAMPLES: examples, TRAIN_LOSS: loss})
    return _reply(node, MessageType.TRAIN, RecordDict({ARRAYS: state_to_record(state), METRICS: metrics}))


def test_aggregate_train_averages_each_layer_over_the_clients_that_trained_it(strategy):
    # The plain example-weighted mean: no share cap, no norm bound (tests/test_robustness.py has those).
    strategy.settings.aggregation_max_client_share, strategy.settings.aggregation_max_update_norm = 1.0, 0.0
    strategy.state.record = RoundRecord(1, assignment={1: [0], 2: [0, 1], 3: [2]})
    replies = [
        _update(1, {"layer.0.a": np.full((2, 2), 1.0, np.float32), "layer.0.b": np.full(3, 1.0, np.float32)}, 10, 1.0),
        _update(
            2,
            {
                "layer.0.a": np.full((2, 2), 4.0, np.float32),
                "layer.0.b": np.full(3, 4.0, np.float32),
                "layer.1.a": np.full(2, 5.0, np.float32),
            },
            30,
            2.0,
        ),
        _update(3, {"layer.1.a": np.full(2, 9.0, np.float32)}, 10, 0.5),  # not its layer: rejected
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)

    state = record_to_state(arrays)
    np.testing.assert_allclose(state["layer.0.a"], 3.25)  # (1 x 10 + 4 x 30) / 40
    np.testing.assert_allclose(state["layer.1.a"], 5.0)
    np.testing.assert_allclose(state["layer.2.a"], 3.0)  # nobody trained it
    assert metrics[TRAIN_LOSS] == pytest.approx(1.75)
    assert set(strategy.state.record.bytes_up) == {1, 2}
    assert strategy.state.record.coverage == [2, 1, 0]
    assert [(f["phase"], f["client"], f["reason"].split(":")[0]) for f in strategy.state.record.failed] == [
        ("train", "node-3", "unassigned-keys")
    ]


def test_aggregate_train_without_a_valid_update_keeps_the_global_model(strategy):
    strategy.state.record = RoundRecord(1, assignment={1: [0]})
    assert strategy.aggregate_train(1, [_error(1, MessageType.TRAIN)]) == (None, None)
    assert strategy.state.global_units is not None
    assert all(np.array_equal(strategy.state.global_units[k], GLOBAL[k]) for k in GLOBAL)
    assert strategy.state.record.coverage == [0, 0, 0]


def test_configure_evaluate_sends_the_global_units_to_every_client(strategy):
    arrays = state_to_record(GLOBAL)
    strategy.state.record = RoundRecord(2)
    messages = list(strategy.configure_evaluate(2, arrays, ConfigRecord(), _grid(GOOD)))
    assert [m.metadata.dst_node_id for m in messages] == [1, 2, 3]
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in messages)
    assert all(m.content.config_records[CONFIG][SERVER_ROUND] == 2 for m in messages)
    assert strategy.state.record.bytes_down["evaluate"] == {node: arrays.count_bytes() for node in (1, 2, 3)}


def _evaluation(node: int, name: str, kind: str, metrics: dict) -> Message:
    info = ClientInfo(name, node - 1, kind, ("a", "b"))
    return _reply(node, MessageType.EVALUATE, RecordDict({METRICS: MetricRecord(metrics), CLIENT: info.to_record()}))


def test_aggregate_evaluate_writes_the_weighted_row_and_returns_metric_and_loss(strategy, tmp_path):
    strategy.settings.aggregation_max_client_share = 1.0  # plain example weights (0.25, 0.75)
    strategy.state.record = RoundRecord(1, assignment={1: [0], 2: [1, 2]})
    strategy.configure_evaluate(1, state_to_record(GLOBAL), ConfigRecord(), _grid(GOOD))
    replies = [
        _evaluation(1, "vqa/0", "vqa", {"loss": 1.0, "accuracy": 0.5, "metric": 0.5, NUM_EXAMPLES: 10}),
        _evaluation(2, "xray/1", "multilabel", {"loss": 2.0, "f1": 0.8, "metric": 0.8, NUM_EXAMPLES: 30}),
        _error(3, MessageType.EVALUATE),
    ]
    result = strategy.aggregate_evaluate(1, replies)

    assert result["metric"] == pytest.approx(0.725) and result["loss"] == pytest.approx(1.75)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["metric_name"] == "accuracy/f1" and row["accuracy"] == 0.5 and row["f1"] == 0.8
    assert row["metric_per_client"] == {"vqa/0": 0.5, "xray/1": 0.8}
    assert row["assignment"] == {"vqa/0": [0], "xray/1": [1, 2]}
    assert row["failed"][0]["phase"] == "evaluate" and row["clients_evaluated"] == 2


def test_aggregate_evaluate_without_replies_writes_a_row_without_metrics(strategy, tmp_path):
    strategy.configure_evaluate(0, state_to_record(GLOBAL), ConfigRecord(), _grid(GOOD))
    assert strategy.aggregate_evaluate(0, [_error(1, MessageType.EVALUATE)]) is None
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["metric"] is None and row["clients_evaluated"] == 0
    assert [(f["client"], f["reason"].split(":")[0]) for f in row["failed"]] == [
        ("node-1", "error"),
        ("node-2", "timeout"),
        ("node-3", "timeout"),
    ]


def test_a_rounds_row_holds_its_coverage_diagnostics(strategy, tmp_path):
    _scores_for(strategy, 1, _grid(GOOD))  # the server learns who the clients are
    grid = _grid({**GOOD, 2: None})  # then partition 2 fails its evaluation: its layers are a fall-back, no diagnostics
    _scores_for(strategy, 1, grid)
    strategy.state.record = RoundRecord(1)
    strategy.state.record.assignment = assignment = strategy.assign(1, [1, 2, 3])
    strategy.configure_evaluate(1, state_to_record(GLOBAL), ConfigRecord(), grid)
    replies = [
        _evaluation(node, f"client/{3 - node}", "vqa", {"loss": 1.0, "accuracy": 0.5, "metric": 0.5, NUM_EXAMPLES: 10})
        for node in (1, 2, 3)
    ]
    strategy.aggregate_evaluate(1, replies)

    diag = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["coverage_diagnostics"]
    assert set(diag["importance_share"]) == set(diag["missed_top_b"]) == {"client/0", "client/1"}
    for partition, node, budget in ((0, 3, 1), (1, 2, 2)):
        scores = np.array(GOOD[partition])
        own = set(np.argsort(-scores, kind="stable")[:budget].tolist())
        assert diag["missed_top_b"][f"client/{partition}"] == len(own - set(assignment[node]))
        assert diag["importance_share"][f"client/{partition}"] == pytest.approx(
            scores[assignment[node]].sum() / scores[list(own)].sum()
        )
    assert diag["layers_trained"] == len({layer for layers in assignment.values() for layer in layers})
