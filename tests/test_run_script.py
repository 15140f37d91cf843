"""`scripts/run-simulation.sh` (what `make run` calls) reports a failed run as a failure: `flwr run
--stream` exits 0 when the ServerApp fails, so the script reads the run's status from the SuperLink
and exits 1 with the reason in its last line (issue 19)."""

import subprocess

import pytest

from tests.conftest import ROOT
from tests.flwr_process import flower_env, processes_mentioning, run_config_arg, stop


def run_script(tmp_path, config: dict, num_supernodes: int = 2) -> subprocess.CompletedProcess:
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = dict(flower_env(home), NUM_SUPERNODES=str(num_supernodes))
    try:
        return subprocess.run(
            ["bash", str(ROOT / "scripts" / "run-simulation.sh"), "--run-config", run_config_arg(config)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop(processes_mentioning(str(home)))


@pytest.mark.slow
def test_a_refused_resume_makes_the_script_fail_with_the_reason(tmp_path, small_run_config):
    config = {key: small_run_config[key] for key in ("output-dir", "model.cache-dir", "model.pretrain-steps")}
    config["resume"] = str(tmp_path / "no-such-run")
    result = run_script(tmp_path, config)
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert last.startswith("f3ocus: FAILED: run ") and "finished:failed" in last, last
    assert "resume: no checkpoint" in last, last


@pytest.mark.slow
def test_a_run_in_which_every_client_fails_makes_the_script_fail(tmp_path, small_run_config):
    config = {key: small_run_config[key] for key in ("output-dir", "model.cache-dir", "model.pretrain-steps")}
    config.update({"task": "task3-medvqa-fl", "data.path": str(tmp_path / "no-such-data"), "round-timeout": 120.0})
    result = run_script(tmp_path, config)
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished:failed" in last and "No client could evaluate the starting model" in last, last


@pytest.mark.slow
def test_a_completed_run_exits_0(tmp_path, small_run_config):
    keys = (
        "output-dir",
        "model.cache-dir",
        "model.pretrain-steps",
        "run-name",
        "data.max-train-per-client",
        "data.max-test-per-client",
        "train.batch-size",
    )
    config = {key: small_run_config[key] for key in keys}
    config["num-server-rounds"] = 1
    result = run_script(tmp_path, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].endswith("finished:completed.")
