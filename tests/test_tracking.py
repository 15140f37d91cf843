"""Experiment trackers: what MLflow and TensorBoard hold, read back with their own readers, is what
``metrics.jsonl`` says; a missing tracker stops the run before round 0; a tracker that fails while
the run goes does not stop it; a resumed run continues its tracker run; ``f3ocus-compare --tracking``
logs every cell and the table."""

import json
import logging
import sys
from pathlib import Path

import pytest
from flwr.app import MessageType

from f3ocus_core.config import parse_run_config
from f3ocus_core.errors import ConfigError
from f3ocus_core.importance import SCORERS
from f3ocus_core.selection import ALGORITHMS
from f3ocus_core.tracking import MlflowTracker, TrackingSettings, open_tracking, round_scalars
from f3ocus_flower.protocol import CONFIG, SERVER_ROUND
from tests.inprocess_grid import run_server_app

mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed: pip install -e '.[tracking]'")
pytest.importorskip("tensorboard", reason="the tracking extra is not installed: pip install -e '.[tracking]'")

from mlflow import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _series(rows):
    """Per flattened key, {round: value} over ``rows`` (what every tracker must hold)."""
    expected: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in round_scalars(row).items():
            expected.setdefault(key, {})[row["round"]] = value
    return expected


def _events(logdir: Path) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_round_scalars_flatten_every_number_of_a_row_and_nothing_else():
    row = {
        "round": 3,
        "metric": 0.5,
        "metric_name": "accuracy",
        "loss": 1.25,
        "train_loss": None,
        "metric_per_client": {"easy-vqa/0": 0.4, "b c": 0.6},
        "bytes_down": {"query": {}, "train": {"a": 10}},
        "bytes_up": {"a": 7},
        "assignment": {"a": [0, 1]},
        "coverage": [1, 0],
        "failed": [{"phase": "train", "client": "a"}],
        "dp_epsilon": 3.2,
    }  # a number a later version adds is logged as it is
    assert round_scalars(row) == {
        "metric": 0.5,
        "loss": 1.25,
        "metric_per_client/easy-vqa_0": 0.4,
        "metric_per_client/b c": 0.6,
        "bytes_down/train/a": 10.0,
        "bytes_up/a": 7.0,
        "dp_epsilon": 3.2,
    }


def test_tracking_keys_are_parsed_and_bad_values_name_their_key(shipped_run_config):
    def parse(**keys):
        return parse_run_config({**shipped_run_config, **keys}, SCORERS, ALGORITHMS).tracking

    assert parse() == TrackingSettings((), "", "f3ocus")
    assert parse(**{"tracking.to": " tensorboard, MLflow"}).trackers == ("mlflow", "tensorboard")
    with pytest.raises(ConfigError, match=r"^tracking.to: unknown tracker 'wandb'"):
        parse(**{"tracking.to": "wandb"})
    with pytest.raises(ConfigError, match=r"^tracking.uri: .* TensorBoard writes event files"):
        parse(**{"tracking.to": "tensorboard", "tracking.uri": "http://mlflow.example:5000"})
    assert parse(**{"tracking.to": "mlflow", "tracking.uri": "http://mlflow.example:5000"}).uri.startswith("http")


@pytest.mark.parametrize(("tracker", "module"), [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_tracker_that_is_not_installed_stops_the_run_before_round_0(small_run_config, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # what `import mlflow` meets where it is not installed
    calls = []

    def spy(handler):
        def wrapped(msg, context):
            calls.append(msg.metadata.message_type)
            return handler(msg, context)

        return wrapped

    config = {**small_run_config, "tracking.to": tracker}
    with pytest.raises(ConfigError, match=r"pip install 'f3ocus-flower\[tracking\]'") as error:
        run_server_app(config, 2, wrap={kind: spy for kind in (MessageType.EVALUATE, MessageType.TRAIN)})
    assert str(error.value).startswith(f"tracking.to: '{tracker}' is asked for but not installed")
    assert calls == [] and not Path(config["output-dir"]).exists()


def test_mlflow_and_tensorboard_hold_what_metrics_jsonl_has(small_run_config):
    config = {**small_run_config, "tracking.to": "mlflow,tensorboard"}
    out = Path(config["output-dir"]) / config["run-name"]
    seen_at_train = {}  # round -> the rounds MLflow already holds when that round's first message arrives

    def watch(handler):
        def wrapped(msg, context):
            server_round = int(msg.content[CONFIG][SERVER_ROUND])
            if server_round not in seen_at_train:
                state = json.loads((out / "tracking.json").read_text())["mlflow"]
                history = MlflowClient(state["uri"]).get_metric_history(state["run_id"], "metric")
                seen_at_train[server_round] = sorted(m.step for m in history)
            return handler(msg, context)

        return wrapped

    _, rows = run_server_app(config, 2, wrap={MessageType.TRAIN: watch})
    assert seen_at_train == {1: [0], 2: [0, 1]}  # logged as each round ended, not at the end of the run
    expected = _series(rows)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert {"metric", "accuracy", "loss", "train_loss", "seconds_train", "mbit_train_per_client"} <= set(expected)
    assert any(key.startswith("metric_per_client/") for key in expected)
    assert any(key.startswith("bytes_down/train/") for key in expected)

    state = json.loads((out / "tracking.json").read_text())
    client = MlflowClient(tracking_uri=state["mlflow"]["uri"])
    run_id = state["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "test-run"
    assert set(run.data.metrics) == set(expected)
    for key, series in expected.items():
        assert {m.step: m.value for m in client.get_metric_history(run_id, key)} == pytest.approx(series), key
    assert run.data.params["selection.algorithm"] == "nsga2" and run.data.params["num-server-rounds"] == "2"
    assert run.data.params["model_path"] == json.loads((out / "config.json").read_text())["model_path"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"adapter", "config.json", "metrics.jsonl", "images"} <= artifacts
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(run_id, "adapter")}
    images = {
        a.path.split("+step+")[0] + "@" + a.path.split("+step+")[1].split("+")[0]
        for a in client.list_artifacts(run_id, "images")
        if a.path.endswith(".png")
    }
    assert images == {f"images/{name}@{step}" for name in ("assignments", "pareto_front") for step in (1, 2)}

    events = _events(out / "tensorboard")
    tags = events.Tags()
    assert set(tags["scalars"]) == set(expected)
    for key, series in expected.items():  # event files hold float32
        assert {e.step: e.value for e in events.Scalars(key)} == pytest.approx(series, rel=1e-6), key
    assert {e.step for e in events.Images("pareto_front")} == {1, 2}
    assert {e.step for e in events.Images("assignments")} == {1, 2}
    assert "run_config/text_summary" in tags["tensors"]


def test_a_tracker_that_fails_while_the_run_goes_is_a_warning_not_a_stop(small_run_config, monkeypatch, caplog):
    def unreachable(self, step, scalars, images):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowTracker, "log_round", unreachable)
    config = {**small_run_config, "num-server-rounds": 1, "tracking.to": "mlflow"}
    with caplog.at_level(logging.WARNING, logger="f3ocus_core.tracking"):
        _, rows = run_server_app(config, 2)
    assert [row["round"] for row in rows] == [0, 1]
    warnings = [r.getMessage() for r in caplog.records if "could not log round" in r.getMessage()]
    assert len(warnings) == 2 and "tracking server went away" in warnings[0]
    state = json.loads((Path(config["output-dir"]) / "test-run" / "tracking.json").read_text())
    assert MlflowClient(state["mlflow"]["uri"]).get_run(state["mlflow"]["run_id"]).info.status == "FINISHED"


def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_drops_the_unfinished_round(tmp_path):
    settings = TrackingSettings(("mlflow", "tensorboard"))
    first = open_tracking(settings, tmp_path, "run", params={"seed": "0"})
    for server_round in (0, 1, 2):  # round 2 was logged, then the server died before its checkpoint
        first.log_round({"round": server_round, "metric": server_round / 10})
    first.close("FAILED")
    run_id = json.loads((tmp_path / "tracking.json").read_text())["mlflow"]["run_id"]

    again = open_tracking(settings, tmp_path, "run", params={"seed": "changed"}, resumed_round=1)
    again.log_round({"round": 2, "metric": 0.9})
    again.log_round({"round": 3, "metric": 1.0})
    again.close("FINISHED")

    state = json.loads((tmp_path / "tracking.json").read_text())
    client = MlflowClient(state["mlflow"]["uri"])
    assert state["mlflow"]["run_id"] == run_id and len(client.search_runs([state["mlflow"]["experiment_id"]])) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"seed": "0"}
    assert run.data.metrics["metric"] == pytest.approx(1.0)
    logged = [(e.step, e.value) for e in _events(tmp_path / "tensorboard").Scalars("metric")]
    assert [step for step, _ in logged] == [0, 1, 2, 3]  # the first round 2 is purged, not shown twice
    assert [value for _, value in logged] == pytest.approx([0.0, 0.1, 0.9, 1.0])


def test_compare_logs_every_cell_as_a_run_of_one_experiment_and_the_table(tmp_path, model_cache, capsys, monkeypatch):
    import io

    import torch

    from f3ocus_evidence.compare import main
    from f3ocus_evidence.results import read_rows

    overrides = (
        f"model.cache-dir='{model_cache}' model.pretrain-steps=30 data.max-train-per-client=24 "
        "data.max-test-per-client=16 train.batch-size=8"
    )
    args = [
        "--plain",
        "--methods",
        "f3ocus-nsga2,lntk-alone",
        "--seeds",
        "0",
        "--rounds",
        "1",
        "--clients",
        "2",
        "--output",
        str(tmp_path / "results"),
        "--name",
        "t",
        "--run-config",
        overrides,
        "--tracking",
        "mlflow",
    ]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(args) == 0
        captured = capsys.readouterr()
        assert captured.out.count("logged to mlflow") == 2
        assert "grid t" not in captured.err  # no progress bar where stderr is not a terminal

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        monkeypatch.setattr(sys, "stderr", terminal := Terminal())
        assert main([*args, "--table-only"]) == 0  # the same cells: nothing is logged twice
        assert "logged to mlflow" not in capsys.readouterr().out
        assert "grid t" in terminal.getvalue() and "2/2" in terminal.getvalue()  # the cells' bar
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "results" / "t"
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("f3ocus-compare-t").experiment_id
    cells = client.search_runs([experiment], "tags.`f3ocus.kind` = 'cell'")
    (grid,) = client.search_runs([experiment], "tags.`f3ocus.kind` = 'grid'")
    assert sorted((run.data.tags["method"], run.data.tags["seed"]) for run in cells) == [
        ("f3ocus-nsga2", "0"),
        ("lntk-alone", "0"),
    ]
    for run in cells:
        rows = read_rows(out / "cells" / f"{run.data.tags['method']}-seed0")
        assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "metric")} == pytest.approx(
            {row["round"]: row["metric"] for row in rows}
        )
        assert run.data.tags["mlflow.parentRunId"] == grid.info.run_id and run.info.status == "FINISHED"
    assert {"table.md", "table.csv", "curves.png", "tradeoff.png", "grid.json"} <= {
        a.path for a in client.list_artifacts(grid.info.run_id)
    }
