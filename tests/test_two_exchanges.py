"""Issue 20, item 1: a round is two exchanges (train; evaluate-and-score), and it chooses and trains
exactly what the three-exchange protocol (query, train, evaluate) did."""

import numpy as np

from tests.protocol_run import load_fixture, protocol_config, protocol_run


def test_two_exchanges_give_the_three_exchange_assignments_and_final_units(small_run_config):
    assignments, units, calls = protocol_run(protocol_config(small_run_config))
    expected_assignments, expected_units = load_fixture()
    assert assignments == expected_assignments
    assert units.keys() == expected_units.keys()
    diff = max(float(np.max(np.abs(units[key] - expected_units[key]))) for key in units)
    print(f"two vs three exchanges: max |difference| of the final global units = {diff:.2e}")
    assert diff <= 1e-6
