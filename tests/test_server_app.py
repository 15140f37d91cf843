"""The ServerApp's whole round protocol against the real ClientApp functions, in one process."""

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, MessageType, RecordDict
from peft import PeftModel

from server_app.app import main
from tests.inprocess_grid import InProcessGrid, client_handlers, run_server_app

OUTPUT_FILES = (
    "config.json",
    "metrics.jsonl",
    "selection.jsonl",
    "assignments.png",
    "accuracy.png",
    "adapter/adapter_config.json",
    "adapter/adapter_model.safetensors",
)


def test_a_run_scores_selects_trains_only_assigned_layers_and_records_everything(small_run_config):
    sent: list[tuple[list[int], list[str]]] = []

    def spy(train):
        def wrapped(msg, context):
            reply = train(msg, context)
            layers = list(msg.content.config_records["config"]["layers"])
            sent.append((layers, list(reply.content.array_records["arrays"].keys())))
            return reply

        return wrapped

    config = dict(small_run_config, **{"selection.budget": "1,2,1"})
    grid, rows = run_server_app(config, num_nodes=3, wrap={MessageType.TRAIN: spy})

    out = f"{config['output-dir']}/{config['run-name']}"
    for name in OUTPUT_FILES:
        assert (__import__("pathlib").Path(out) / name).exists(), name
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert set(row["accuracy_per_client"]) == {"easy-vqa/0", "easy-vqa/1", "easy-vqa/2"}
        assert row["metric_name"] == "accuracy" and row["metric"] == row["accuracy"]
        for key in ("loss", "bytes_up", "bytes_down", "seconds_query", "seconds_select", "seconds_train"):
            assert key in row
    # Round 0 only evaluates (and scores); a training round sends the whole model once, to evaluate
    # (and score), and to train only the assigned layers' units, so train bytes down scale with the
    # budget like bytes up. No round has a query exchange.
    assert all(row["bytes_down"]["query"] == {} for row in rows) and rows[0]["bytes_down"]["train"] == {}
    assert rows[0]["mbit_train_per_client"] is None
    down = rows[1]["bytes_down"]
    assert down["evaluate"] == rows[0]["bytes_down"]["evaluate"]
    assert abs(down["train"]["easy-vqa/1"] - 2 * down["train"]["easy-vqa/0"]) < 0.05 * down["train"]["easy-vqa/0"]
    assert down["train"]["easy-vqa/0"] < down["evaluate"]["easy-vqa/0"] / 2
    # Two exchanges per client per round (one in round 0), in the order train, evaluate.
    assert [kind for node, kind in grid.calls if node == 1] == [MessageType.EVALUATE] + [
        MessageType.TRAIN,
        MessageType.EVALUATE,
    ] * 2
    mbit = np.mean([(down["train"][c] + rows[1]["bytes_up"][c]) * 8 / 1e6 for c in down["train"]])
    assert rows[1]["mbit_train_per_client"] == pytest.approx(mbit, rel=1e-12)
    # Every client got exactly its budget and sent back exactly the units of those layers.
    budgets = {"easy-vqa/0": 1, "easy-vqa/1": 2, "easy-vqa/2": 1}
    for row in rows[1:]:
        assert {client: len(layers) for client, layers in row["assignment"].items()} == budgets
    assert len(sent) == 6
    for layers, keys in sent:
        assert keys and all(any(f"encoder.layer.{l}." in k for l in layers) for k in keys)
        assert {l for l in layers if any(f"encoder.layer.{l}." in k for k in keys)} == set(layers)
    # Upload is only the assigned units: a client with budget 2 sends twice the bytes of budget 1.
    up = rows[1]["bytes_up"]
    assert abs(up["easy-vqa/1"] - 2 * up["easy-vqa/0"]) < 0.05 * up["easy-vqa/0"]
    selection = [json.loads(line) for line in Path(f"{out}/selection.jsonl").read_text().splitlines()]
    assert len(selection) == 2 and np.asarray(selection[0]["scores"]).shape == (3, 4)
    np.testing.assert_allclose(np.asarray(selection[0]["scores"]).sum(axis=1), 1.0, rtol=1e-6)
    # The saved adapter loads with PEFT onto the base model.
    from f3ocus_core.models import load_vqa_model

    base, _ = load_vqa_model(json.loads(Path(f"{out}/config.json").read_text())["model_path"])
    assert isinstance(PeftModel.from_pretrained(base, f"{out}/adapter"), PeftModel)


def test_a_failing_client_is_logged_and_the_round_goes_on(small_run_config):
    def fail(node, kind, _):
        return node == 2 and kind == MessageType.TRAIN

    _, rows = run_server_app(dict(small_run_config, **{"num-server-rounds": 1}), num_nodes=3, fail=fail)
    assert rows[1]["failed"] and rows[1]["failed"][0]["client"] == "easy-vqa/1"
    assert set(rows[1]["bytes_up"]) == {"easy-vqa/0", "easy-vqa/2"}
    assert len(rows[1]["accuracy_per_client"]) == 3  # it still evaluates


def test_missing_data_stops_the_run_before_training(small_run_config, tmp_path):

    config = dict(small_run_config, **{"task": "task3-medvqa-fl", "data.path": str(tmp_path / "nothing-here")})
    handlers = client_handlers()
    grid = InProcessGrid(config, handlers, 9)
    with pytest.raises(RuntimeError, match="before training") as error:
        main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    assert "nothing-here" in str(error.value) or "data.path" in str(error.value)
    assert all(kind != MessageType.TRAIN for _, kind in grid.calls)


def test_a_typo_in_selection_params_stops_the_server_before_the_model_is_built(
    shipped_run_config, tmp_path, monkeypatch
):
    import server_app.app as server
    from f3ocus_core.config import ConfigError

    built = []
    monkeypatch.setattr(server, "set_up_model", lambda *args, **kwargs: built.append(args))
    config = dict(shipped_run_config, **{"selection.params": "populaton=40", "output-dir": str(tmp_path)})
    grid = InProcessGrid(config, client_handlers(), 2)
    with pytest.raises(ConfigError, match=r"^selection.params: unknown parameter 'populaton'.*'population'"):
        main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    assert built == [] and grid.calls == []
    assert not any(tmp_path.iterdir())
