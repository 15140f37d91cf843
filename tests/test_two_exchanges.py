"""Issue 20, item 1: a round is two exchanges (train; evaluate-and-score), and it chooses and trains
exactly what the three-exchange protocol (query, train, evaluate) did."""

import tomllib
from collections import Counter

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord

from f3ocus_core.config import parse_run_config
from f3ocus_core.importance import SCORERS
from f3ocus_core.selection import ALGORITHMS
from f3ocus_flower.protocol import CONFIG, SCORE_ROUND, SERVER_ROUND, state_to_record
from server_app.strategy import F3ocusStrategy
from tests.inprocess_grid import InProcessGrid
from tests.protocol_run import load_fixture, protocol_config, protocol_run
from tests.test_replies import GLOBAL, HANDLERS, ROOT, UNITS, _Recorder


def test_two_exchanges_give_the_three_exchange_assignments_and_final_units(small_run_config):
    assignments, units, calls = protocol_run(protocol_config(small_run_config))
    expected_assignments, expected_units = load_fixture()
    assert assignments == expected_assignments
    assert units.keys() == expected_units.keys()
    diff = max(float(np.max(np.abs(units[key] - expected_units[key]))) for key in units)
    print(f"two vs three exchanges: max |difference| of the final global units = {diff:.2e}")
    assert diff <= 1e-6
    # Two exchanges per client per round (round 0: its evaluate), and no query.
    counts = Counter(kind for _, kind in calls)
    assert counts == {MessageType.EVALUATE: 3 * 4, MessageType.TRAIN: 3 * 3}


def _mock_run(tmp_path, control: str = "", **start) -> tuple[F3ocusStrategy, InProcessGrid, list[Message]]:
    """The strategy's whole loop over test_replies.py's three mock clients; returns every message sent."""
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update(
        {
            "selection.budget": "1,2,1",
            "round-timeout": 5.0,
            "selection.algorithm": "exact",
            "num-server-rounds": 2,
            "control": control,
        }
    )
    settings = parse_run_config(config, SCORERS, ALGORITHMS)
    sent: list[Message] = []

    def spy(handler):
        def wrapped(msg, context):
            sent.append(msg)
            return handler(msg, context)

        return wrapped

    grid = InProcessGrid({}, {kind: spy(handler) for kind, handler in HANDLERS.items()}, 3)
    strategy = F3ocusStrategy(settings, UNITS, _Recorder(tmp_path, ["0", "1", "2"]))
    strategy.result = strategy.start(grid, state_to_record(GLOBAL), 2, timeout=5.0, **start)
    return strategy, grid, sent


def test_start_honours_train_config_evaluate_config_and_evaluate_fn(tmp_path):
    seen: list[tuple[int, set[str]]] = []

    def evaluate_fn(server_round: int, arrays) -> MetricRecord:
        seen.append((server_round, set(arrays)))
        return MetricRecord({"central": float(server_round)})

    strategy, _, sent = _mock_run(
        tmp_path,
        train_config=ConfigRecord({"lr-scale": 0.5}),
        evaluate_config=ConfigRecord({"tta": 1}),
        evaluate_fn=evaluate_fn,
    )
    for msg in sent:
        config = msg.content.config_records[CONFIG]
        own = "lr-scale" if msg.metadata.message_type == MessageType.TRAIN else "tta"
        other = "tta" if own == "lr-scale" else "lr-scale"
        assert own in config and other not in config
    assert [r for r, _ in seen] == [0, 1, 2] and all(keys == set(GLOBAL) for _, keys in seen)
    assert {r: m["central"] for r, m in strategy.result.evaluate_metrics_serverapp.items()} == {0: 0, 1: 1, 2: 2}
    with pytest.raises(ValueError, match="server-round"):
        _mock_run(tmp_path / "clash", train_config=ConfigRecord({SERVER_ROUND: 3}))


def test_only_the_evaluations_before_a_training_round_ask_for_scores(tmp_path):
    _, _, sent = _mock_run(tmp_path)
    asked = [
        (int(m.content.config_records[CONFIG][SERVER_ROUND]), m.content.config_records[CONFIG].get(SCORE_ROUND))
        for m in sent
        if m.metadata.message_type == MessageType.EVALUATE
    ]
    assert asked == [(0, 1)] * 3 + [(1, 2)] * 3 + [(2, None)] * 3


def test_heads_only_asks_for_no_scores_and_assigns_no_layer(tmp_path):
    strategy, _, sent = _mock_run(tmp_path, control="heads-only")
    assert not any(SCORE_ROUND in m.content.config_records[CONFIG] for m in sent)
    assert all(layers == [] for row in strategy.recorder.rows[1:] for layers in row["assignment"].values())
    assert strategy.state.global_units.keys() == GLOBAL.keys()
    assert all(np.array_equal(strategy.state.global_units[key], GLOBAL[key]) for key in GLOBAL)
