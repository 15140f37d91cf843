"""The metrics row and log line the recorder builds from a round's record."""

import pytest

from f3ocus_core.recorder import RoundRecord, metrics_row, round_log_line

EVALUATIONS = {"a": {"loss": 1.0, "accuracy": 0.5, "metric": 0.5, "num-examples": 10},
               "b": {"loss": 3.0, "accuracy": 1.0, "metric": 1.0, "num-examples": 30}}
NAMES = {1: "a", 2: "b"}


def test_train_mbit_counts_units_sent_to_train_and_accepted_updates_only():
    record = RoundRecord(1, assignment={1: [0], 2: [0, 1]})
    for node in (1, 2):
        record.count_down("query", node, 100_000)
        record.count_down("evaluate", node, 100_000)
    record.count_down("train", 1, 1_000)
    record.count_down("train", 2, 3_000)
    record.bytes_up[1] = 1_000  # b's update was rejected: nothing accepted from it
    row = metrics_row(record, EVALUATIONS, NAMES.get)

    assert row["mbit_train_per_client"] == pytest.approx(((1_000 + 1_000) + 3_000) * 8 / 1e6 / 2)
    assert row["bytes_down"] == {"query": {"a": 100_000, "b": 100_000}, "train": {"a": 1_000, "b": 3_000},
                                 "evaluate": {"a": 100_000, "b": 100_000}}
    assert row["metric_name"] == "accuracy" and row["metric"] == pytest.approx(0.875)
    assert row["assignment"] == {"a": [0], "b": [0, 1]}
    line = round_log_line(row, 3)
    assert line.startswith("Round 1/3: accuracy 0.8750, loss 2.5000 | up 0.001 MB, down 0.404 MB")
    assert "(query 0.200, train 0.004, evaluate 0.200) | train 0.020 Mbit/client" in line


def test_round_zero_has_no_training_traffic():
    record = RoundRecord(0)
    record.count_down("evaluate", 1, 5_000)
    row = metrics_row(record, {"a": EVALUATIONS["a"]}, NAMES.get)
    assert row["mbit_train_per_client"] is None and "assignment" not in row
    assert "train - Mbit/client" in round_log_line(row, 3)
