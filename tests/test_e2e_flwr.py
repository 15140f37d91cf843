"""The real thing: `flwr run .` in Flower's local simulation, as a subprocess, 2 clients, 2 rounds."""

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.flwr_process import BIN, flower_env, processes_mentioning, stop


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def run_flwr(
    tmp_path: Path, run_config: dict, num_supernodes: int = 2, timeout: int = 900
) -> subprocess.CompletedProcess:
    """`flwr run ROOT --stream` with its own Flower home; stops every process it started."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {num_supernodes}\noptions.backend.client-resources.num-cpus = 1\n"
    )
    overrides = " ".join(f"{key}={_toml_value(value)}" for key, value in run_config.items())
    try:
        return subprocess.run(
            [str(BIN / "flwr"), "run", str(ROOT), "--stream", "--run-config", overrides],
            env=flower_env(home),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        stop(processes_mentioning(str(home)))
        assert not processes_mentioning(str(home)), "a Flower process outlived the test"


def flwr_run_config(small_run_config: dict) -> dict:
    """The keys of ``small_run_config`` a ``flwr run`` test passes as ``--run-config`` (the others stay
    as shipped)."""
    keys = (
        "num-server-rounds",
        "run-name",
        "output-dir",
        "model.cache-dir",
        "model.pretrain-steps",
        "data.max-train-per-client",
        "data.max-test-per-client",
        "train.batch-size",
    )
    return {key: small_run_config[key] for key in keys}


@pytest.mark.slow
def test_flwr_run_simulation_writes_every_output(tmp_path, small_run_config):
    config = flwr_run_config(small_run_config)
    result = run_flwr(tmp_path, config)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    out = Path(config["output-dir"]) / config["run-name"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows:
        for key in (
            "accuracy",
            "accuracy_per_client",
            "loss",
            "bytes_up",
            "bytes_down",
            "seconds_query",
            "seconds_select",
            "seconds_train",
            "mbit_train_per_client",
        ):
            assert key in row, key
        assert len(row["accuracy_per_client"]) == 2
    assert all(sum(row["bytes_up"].values()) > 0 for row in rows[1:])
    selection = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert [s["round"] for s in selection] == [1, 2] and all(s["front"] for s in selection)
    for picture in ("assignments.png", "accuracy.png", "fronts/round_001.png", "coverage/round_002.png"):
        assert Image.open(out / picture).size[0] > 100, picture
    assert json.loads((out / "config.json").read_text())["settings"]["num_rounds"] == 2
    assert (out / "adapter" / "adapter_config.json").exists()
    assert "Round 2/2" in log


@pytest.mark.slow
def test_flwr_run_on_the_task3_medvqa_fl_fixture(tmp_path, small_run_config):
    """Issue 5: a federated run on MedVQA-FL (9 modality clients) built from MedMNIST-format files."""
    from tests.data_fixtures import write_task_fixture

    data = write_task_fixture(tmp_path / "data", "task3-medvqa-fl")
    config = {
        key: small_run_config[key]
        for key in ("run-name", "output-dir", "model.cache-dir", "model.pretrain-steps", "train.batch-size")
    }
    config.update(
        {
            "num-server-rounds": 1,
            "task": "task3-medvqa-fl",
            "data.path": str(data),
            "data.max-train-per-client": 0,
            "data.max-test-per-client": 0,
            "min-clients": 9,
        }
    )
    result = run_flwr(tmp_path, config, num_supernodes=9)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    out = Path(config["output-dir"]) / config["run-name"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1]
    assert len(rows[1]["accuracy_per_client"]) == 9 and not rows[1]["failed"]
    assert len(rows[1]["assignment"]) == 9
    labels = sorted(p.name for p in (out / "labels").iterdir())
    assert len(labels) == 9 and "task3-medvqa-fl_oct.json" in labels
