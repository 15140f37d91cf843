"""Client sampling per round (``clients-per-round``): the draw itself, and the strategy selecting
for, training and counting coverage over the sampled clients only, while every client still
evaluates (and scores, since the next round's sample is drawn after the evaluation)."""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from f3ocus_core.config import ConfigError, parse_run_config
from f3ocus_core.importance import SCORERS
from f3ocus_core.recorder import RoundRecord
from f3ocus_core.sampling import sample_clients
from f3ocus_core.selection import ALGORITHMS
from f3ocus_flower.protocol import state_to_record
from tests.test_strategy import GLOBAL, GOOD, UNITS, _grid, _scores_for, _update
from tests.test_strategy import strategy as strategy  # noqa: F401  (the fixture)


def test_sample_is_a_seeded_subset_in_the_given_order_drawn_afresh_each_round():
    clients = [f"c{i}" for i in range(64)]
    sample = sample_clients(clients, 8, seed=3, server_round=1)
    assert len(sample) == len(set(sample)) == 8 and set(sample) <= set(clients)
    assert sample == sorted(sample, key=clients.index), "kept in the candidates' order"
    assert sample == sample_clients(clients, 8, seed=3, server_round=1), "same seed and round, same sample"
    assert sample != sample_clients(clients, 8, seed=3, server_round=2)
    assert sample != sample_clients(clients, 8, seed=4, server_round=1)
    assert sample_clients(clients, 0, 3, 1) == clients and sample_clients(clients, 99, 3, 1) == clients
    with pytest.raises(ValueError, match="clients-per-round"):
        sample_clients(clients, -1, 3, 1)


def test_sampling_is_uniform_over_clients():
    """Over many rounds each of 16 clients is drawn about 4/16 of the time (binomial bounds)."""
    counts = np.zeros(16)
    rounds = 2000
    for r in range(rounds):
        for c in sample_clients(list(range(16)), 4, seed=0, server_round=r):
            counts[c] += 1
    expected = rounds * 4 / 16
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * (1 - 4 / 16))), counts


def test_clients_per_round_is_a_checked_run_config_key():
    assert parse_run_config({"clients-per-round": 5}, SCORERS, ALGORITHMS).clients_per_round == 5
    assert parse_run_config({}, SCORERS, ALGORITHMS).clients_per_round == 0
    with pytest.raises(ConfigError, match="clients-per-round"):
        parse_run_config({"clients-per-round": -2}, SCORERS, ALGORITHMS)


def test_strategy_selects_trains_and_counts_coverage_over_the_sampled_clients(strategy):  # noqa: F811
    strategy.settings.clients_per_round = 2
    grid = _grid(GOOD)
    _scores_for(strategy, 1, grid)  # round 0's evaluation: every client scores
    messages = list(strategy.configure_train(1, state_to_record(GLOBAL), ConfigRecord(), grid))
    queried = sorted(m.metadata.dst_node_id for m in messages)
    assert len(queried) == 2
    assignment = strategy.state.record.assignment
    assert sorted(assignment) == queried == sorted(m.metadata.dst_node_id for m in messages)

    replies = [
        _update(node, {key: GLOBAL[key] + 1 for key in UNITS.keys_of(assignment[node])}, 8, 1.0) for node in queried
    ]
    strategy.aggregate_train(1, replies)
    expected = np.zeros(3, int)
    for node in queried:
        expected[assignment[node]] += 1
    assert not strategy.state.record.failed, strategy.state.record.failed
    assert strategy.state.record.coverage == expected.tolist()

    samples = set()
    for server_round in range(2, 12):
        messages = strategy.configure_train(server_round, state_to_record(GLOBAL), ConfigRecord(), grid)
        samples.add(frozenset(m.metadata.dst_node_id for m in messages))
    assert len(samples) > 1 and set().union(*samples) == {1, 2, 3}, "each round draws afresh; all take turns"

    strategy.state.record = RoundRecord(2)
    evaluate = list(strategy.configure_evaluate(2, state_to_record(GLOBAL), ConfigRecord(), _grid(GOOD)))
    assert [m.metadata.dst_node_id for m in evaluate] == [1, 2, 3], "every client evaluates"
