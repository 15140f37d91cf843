"""The metrics row and log line the recorder builds from a round's record."""

import numpy as np
import pytest

from f3ocus_core.recorder import RoundRecord, metrics_row, round_log_line

EVALUATIONS = {
    "a": {"loss": 1.0, "accuracy": 0.5, "metric": 0.5, "num-examples": 10},
    "b": {"loss": 3.0, "accuracy": 1.0, "metric": 1.0, "num-examples": 30},
}
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
    assert row["bytes_down"] == {
        "query": {"a": 100_000, "b": 100_000},
        "train": {"a": 1_000, "b": 3_000},
        "evaluate": {"a": 100_000, "b": 100_000},
    }
    assert row["metric_name"] == "accuracy" and row["metric"] == pytest.approx(0.875)
    assert row["assignment"] == {"a": [0], "b": [0, 1]}
    line = round_log_line(row, 3)
    assert line.startswith("Round 1/3: accuracy 0.8750, loss 2.5000 | up 0.001 MB, down 0.404 MB")
    assert "(query 0.200, train 0.004, evaluate 0.200) | train 0.020 Mbit/client" in line


def test_a_round_without_a_query_exchange_logs_two_exchanges():
    record = RoundRecord(2, assignment={1: [0]}, seconds_select=0.5, seconds_train=2.0, seconds_eval=3.0)
    record.count_down("train", 1, 1_000)
    record.count_down("evaluate", 1, 100_000)
    line = round_log_line(metrics_row(record, {"a": EVALUATIONS["a"]}, NAMES.get), 3)
    assert "query" not in line
    assert "(train 0.001, evaluate 0.100)" in line and "(select 0.50, train 2.0, eval+score 3.0)" in line


def test_round_zero_has_no_training_traffic():
    record = RoundRecord(0)
    record.count_down("evaluate", 1, 5_000)
    row = metrics_row(record, {"a": EVALUATIONS["a"]}, NAMES.get)
    assert row["mbit_train_per_client"] is None and "assignment" not in row
    assert "train - Mbit/client" in round_log_line(row, 3)


def test_coverage_diagnostics_count_trained_layers_and_each_clients_distance_from_its_top_b():
    from f3ocus_core.selection.diagnostics import coverage_diagnostics

    assigned = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=bool)
    scores = {
        "a": ([0.4, 0.3, 0.2, 0.1, 0.0], 2),  # got its top-2 {0, 1}
        "b": ([0.5, 0.1, 0.3, 0.0, 0.1], 2),
    }  # top-2 {0, 2}, got {2, 3}: missed 1, share 0.3 / 0.8
    diag = coverage_diagnostics(["a", "b", "c"], assigned, scores)
    assert diag["layers_trained"] == 4 and diag["num_layers"] == 5 and diag["untrained_layers"] == [4]
    assert diag["missed_top_b"] == {"a": 0, "b": 1}  # c sent no usable scores: no entry
    assert diag["importance_share"]["a"] == pytest.approx(1.0)
    assert diag["importance_share"]["b"] == pytest.approx(0.3 / 0.8)
    ties = coverage_diagnostics(["t"], np.array([[0, 1, 0]], bool), {"t": ([1.0, 1.0, 0.0], 1)})
    assert ties["missed_top_b"] == {"t": 1} and ties["importance_share"]["t"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 scores for 5 layers"):
        coverage_diagnostics(["a"], assigned[:1], {"a": ([0.1, 0.2, 0.3], 1)})


def test_the_recorder_puts_the_diagnostics_into_the_rounds_row_and_draws_them(tmp_path):
    import json

    from f3ocus_core.recorder import RunRecorder
    from f3ocus_core.selection import select, top_b_masks

    scores = np.array([[0.5, 0.3, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]])
    recorder = RunRecorder(tmp_path, ["l0", "l1", "l2", "l3"])
    result = select(scores, 2, algorithm="exact", seed=0)
    recorder.record_selection(
        1, ["a", "b", "c"], {"scores": scores, "budgets": [2, 2, 2], **result.as_dict()}, result, top_b_masks(scores, 2)
    )
    fallback = np.zeros((4, 4), dtype=bool)
    fallback[:3] = result.masks
    fallback[3, [2, 3]] = True  # d had no usable scores: fall-back layers
    recorder.record_assignment(1, ["a", "b", "c", "d"], fallback)
    row = metrics_row(RoundRecord(1), EVALUATIONS, NAMES.get)
    recorder.record_round(row)
    written = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    diag = written["coverage_diagnostics"]
    expected_share = [(scores[i] * result.masks[i]).sum() / np.sort(scores[i])[-2:].sum() for i in range(3)]
    assert diag["importance_share"] == pytest.approx(dict(zip("abc", expected_share)))
    assert set(diag["missed_top_b"]) == {"a", "b", "c"}
    assert diag["layers_trained"] == int(fallback.any(axis=0).sum())
    assert sum(diag["missed_top_b"].values()) > 0  # the balanced choice moves someone off its top-2
    assert (tmp_path / "coverage_diagnostics.png").stat().st_size > 0
    recorder.record_round(metrics_row(RoundRecord(2), EVALUATIONS, NAMES.get))  # a round without an assignment
    assert "coverage_diagnostics" not in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
