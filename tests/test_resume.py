"""Issue 12, items 1-2 end to end: a server crash mid-round resumes from the checkpoint to the same
final model as an uninterrupted run; a restarted node gets back its personal head from disk."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, MessageType, RecordDict

from f3ocus_core.checkpoint import load_checkpoint
from tests.conftest import ROOT
from tests.flwr_process import BIN, flower_env, processes_mentioning, run_config_arg, stop
from tests.inprocess_grid import InProcessGrid, client_handlers, run_server_app


class ServerCrash(BaseException):
    """Raised inside the server process to stop it the way a kill would: nothing catches it."""


def _config(small_run_config: dict, name: str) -> dict:
    return dict(small_run_config, **{"num-server-rounds": 3, "run-name": name, "train.max-steps": 2})


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[key] - b[key]))) for key in a)


def test_a_run_stopped_in_round_2_resumes_to_the_uninterrupted_result(small_run_config):
    reference = _config(small_run_config, "uninterrupted")
    _, reference_rows = run_server_app(reference, num_nodes=3)

    crashed = _config(small_run_config, "crashed")
    trained: list[int] = []

    def crash_after_first_train_of_round_2(train):
        def wrapped(msg, context):
            reply = train(msg, context)  # the client trains and saves its round-2 head first
            if int(msg.content.config_records["config"]["server-round"]) == 2:
                trained.append(context.node_id)
                raise ServerCrash
            return reply

        return wrapped

    with pytest.raises(ServerCrash):
        run_server_app(crashed, num_nodes=3, wrap={MessageType.TRAIN: crash_after_first_train_of_round_2})
    out = Path(crashed["output-dir"]) / "crashed"
    assert load_checkpoint(out).server_round == 1 and trained == [1]
    assert [json.loads(line)["round"] for line in (out / "selection.jsonl").read_text().splitlines()] == [1, 2]

    # Fresh contexts (a new Flower run): heads come from the nodes' disks.
    grid, rows = run_server_app(dict(crashed, resume=str(out)), num_nodes=3)
    assert [row["round"] for row in rows] == [0, 1, 2, 3]
    assert [json.loads(line)["round"] for line in (out / "selection.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert grid.calls[0] == (1, MessageType.QUERY)  # no second round-0 evaluation
    final, expected = load_checkpoint(out), load_checkpoint(Path(reference["output-dir"]) / "uninterrupted")
    assert final.server_round == expected.server_round == 3
    diff = _max_diff(final.units, expected.units)
    print(f"resumed vs uninterrupted: max |difference| of the final global units = {diff:.2e}")
    assert diff <= 1e-6
    for row, ref in zip(rows, reference_rows):
        assert row["assignment" if row["round"] else "round"] == ref["assignment" if ref["round"] else "round"]
        assert row["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-9)
    assert json.loads((out / "config.json").read_text())["resumed"][0]["after_round"] == 1


def test_the_global_units_do_not_depend_on_the_order_replies_arrive(small_run_config, monkeypatch):
    # Flower returns replies in arrival order, which a resumed run does not repeat; the average must
    # not depend on it (the LoRA product mean once did, by the sign of its SVD factors).
    two_rounds = {"num-server-rounds": 2}
    _, rows = run_server_app(dict(_config(small_run_config, "in-order"), **two_rounds), num_nodes=3)
    deliver = InProcessGrid.send_and_receive
    monkeypatch.setattr(
        InProcessGrid,
        "send_and_receive",
        lambda self, messages, **kwargs: list(reversed(list(deliver(self, messages, **kwargs)))),
    )
    _, reversed_rows = run_server_app(dict(_config(small_run_config, "reversed"), **two_rounds), num_nodes=3)
    out = Path(small_run_config["output-dir"])
    shared = [key for key in ("accuracy", "train_loss") if key in rows[-1]]
    assert shared and [[row[key] for key in shared] for row in rows] == [
        [row[key] for key in shared] for row in reversed_rows
    ]
    assert _max_diff(load_checkpoint(out / "reversed").units, load_checkpoint(out / "in-order").units) == 0.0


def test_resuming_with_another_configuration_is_refused_naming_the_keys(small_run_config):
    config = dict(small_run_config, **{"num-server-rounds": 1, "run-name": "first", "train.max-steps": 1})
    run_server_app(config, num_nodes=2)
    out = Path(config["output-dir"]) / "first"
    before = (out / "metrics.jsonl").read_text()
    changed = dict(config, **{"resume": str(out), "peft.lora-rank": 4, "selection.algorithm": "sa"})
    refused = r"resume: .*\(peft\.lora-rank, selection\.algorithm differ: peft\.lora-rank: checkpoint 8, this run 4"
    with pytest.raises(ValueError, match=refused):
        run_server_app(changed, num_nodes=2)
    assert (out / "metrics.jsonl").read_text() == before
    # Allowed to change: more rounds. The run continues after round 1.
    _, rows = run_server_app(dict(config, **{"resume": str(out), "num-server-rounds": 2}), num_nodes=2)
    assert [row["round"] for row in rows] == [0, 1, 2]


class RestartingGrid(InProcessGrid):
    """Restarts node 2 (a fresh Context: empty ``state``) just before round 1's evaluate message,
    after it trained its head in round 1. (A node that restarts between an evaluate and the next
    train has lost the units that evaluate brought: its train reply is an error, and it takes part
    again from the next evaluate.)"""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        restarting = any(
            m.metadata.message_type == MessageType.EVALUATE
            and m.metadata.dst_node_id == 2
            and int(m.content.config_records["config"]["server-round"]) == 1
            for m in messages
        )
        if restarting:
            old = self.contexts[2]
            self.head_before = {k: a.numpy() for k, a in old.state.array_records["head"].items()}
            self.contexts[2] = Context(
                run_id=old.run_id,
                node_id=2,
                node_config=dict(old.node_config),
                state=RecordDict(),
                run_config=dict(old.run_config),
            )
        replies = super().send_and_receive(messages, timeout=timeout)
        if restarting:
            self.head_after = {k: a.numpy() for k, a in self.contexts[2].state.array_records["head"].items()}
        return replies


def _run_on(grid: InProcessGrid, config: dict) -> None:
    from server_app.app import main

    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))


def test_a_restarted_node_gets_its_head_back_from_disk(small_run_config, tmp_path):
    config = dict(small_run_config, **{"num-server-rounds": 2, "run-name": "restart", "train.max-steps": 2})
    grid = RestartingGrid(config, client_handlers(), num_nodes=3)
    for context in grid.contexts.values():
        context.node_config["state-dir"] = str(tmp_path / "node-state")
    _run_on(grid, config)
    assert grid.head_before and grid.head_before.keys() == grid.head_after.keys()
    for key in grid.head_before:
        np.testing.assert_array_equal(grid.head_after[key], grid.head_before[key])
    assert list((tmp_path / "node-state").glob("*/partition-1/head-round-*.npz"))
    # The restart changes nothing: same final model as a run whose nodes never restarted.
    steady = dict(config, **{"run-name": "steady"})
    plain = InProcessGrid(steady, client_handlers(), num_nodes=3)
    for context in plain.contexts.values():
        context.node_config["state-dir"] = str(tmp_path / "node-state")
    _run_on(plain, steady)
    out = Path(config["output-dir"])
    assert _max_diff(load_checkpoint(out / "restart").units, load_checkpoint(out / "steady").units) <= 1e-6


# ---------------------------------------------------------------------- the real thing: `flwr run`


def _flower_home(path: Path) -> Path:
    path.mkdir()
    (path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        "options.num-supernodes = 2\noptions.backend.client-resources.num-cpus = 1\n"
    )
    return path


def _flwr_run(home: Path, cwd: Path, config: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "flwr"), "run", str(ROOT), "--stream", "--run-config", run_config_arg(config)],
        env=flower_env(home),
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _children(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in result.stdout.split()]


def _finish(process: subprocess.Popen, home: Path, log: Path, timeout: float = 900) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        process.kill()
        stop(processes_mentioning(str(home)))
    return log.read_text(errors="replace")


@pytest.mark.slow
def test_flwr_run_killed_in_round_2_resumes_to_the_uninterrupted_result(tmp_path, small_run_config):
    keys = (
        "output-dir",
        "model.cache-dir",
        "model.pretrain-steps",
        "data.max-train-per-client",
        "data.max-test-per-client",
        "train.batch-size",
    )
    config = {key: small_run_config[key] for key in keys}
    config.update(
        {"num-server-rounds": 3, "train.max-steps": 2, "data.max-train-per-client": 16, "data.max-test-per-client": 8}
    )
    outputs = Path(config["output-dir"])

    home = _flower_home(tmp_path / "home-reference")
    log = tmp_path / "reference.log"
    text = _finish(_flwr_run(home, tmp_path, dict(config, **{"run-name": "reference"}), log), home, log)
    assert load_checkpoint(outputs / "reference").server_round == 3, text[-3000:]

    # Kill the server (the ServerApp's process group, then the SuperLink's) once a client has
    # trained in round 2, i.e. in the middle of round 2.
    home = _flower_home(tmp_path / "home")
    log = tmp_path / "crashed.log"
    process = _flwr_run(home, tmp_path, dict(config, **{"run-name": "crashed"}), log)
    try:
        deadline = time.monotonic() + 600
        while not list((home / "f3ocus-state").glob("*/partition-*/head-round-2.npz")):
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        superlink = [
            pid
            for pid in processes_mentioning(str(home))
            if pid != process.pid and "flower-superlink" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(superlink) == 1
        server_group = {os.getpgid(pid) for pid in _children(superlink[0])}
        for group in [*server_group, os.getpgid(superlink[0])]:
            os.killpg(group, signal.SIGKILL)
    finally:
        text = _finish(process, home, log, timeout=30)
    out = outputs / "crashed"
    selection_rounds = [json.loads(line)["round"] for line in (out / "selection.jsonl").read_text().splitlines()]
    assert selection_rounds == [1, 2], text[-3000:]  # round 2 had started
    assert load_checkpoint(out).server_round == 1 and "Round 2/3" not in text

    log = tmp_path / "resumed.log"
    text = _finish(
        _flwr_run(home, tmp_path, dict(config, **{"run-name": "crashed", "resume": str(out)}), log), home, log
    )
    assert "Resuming after round 1 of 3" in text, text[-3000:]
    redone = max(selection_rounds) - 1
    assert redone <= 1
    rows = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1, 2, 3]
    final, expected = load_checkpoint(out), load_checkpoint(outputs / "reference")
    assert final.server_round == 3
    diff = _max_diff(final.units, expected.units)
    print(
        f"flwr run: killed in round 2, resumed after round 1 ({redone} round redone); "
        f"max |difference| of the final global units vs the uninterrupted run = {diff:.2e}"
    )
    assert diff <= 1e-6
    assert not processes_mentioning(str(home))
