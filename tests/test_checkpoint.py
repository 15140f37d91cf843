"""The checkpoint file and the client state store: atomic writes, refusal of another configuration,
RNG round trips, newest-state-up-to-a-round lookups."""

import random

import numpy as np
import pytest
import torch

from f3ocus_core.checkpoint import (
    Checkpoint,
    atomic_file,
    capture_rng,
    check_fingerprint,
    checkpoint_path,
    config_fingerprint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    write_npz_atomic,
)
from f3ocus_core.client_state import ClientStateStore, run_key, state_dir
from f3ocus_core.config import ConfigError

LAYERS = ["layer.0", "layer.1"]
UNITS = [["a.0", "b.0"], ["a.1", "b.1"]]


def _checkpoint(server_round: int = 2, fingerprint: dict | None = None) -> Checkpoint:
    rng, torch_rng = capture_rng()
    units = {"a.0": np.arange(6, dtype=np.float32).reshape(2, 3), "b.0": np.full(4, 0.5, dtype=np.float32)}
    state = {
        "clients": [{"name": "c/0", "partition_id": 0, "kind": "vqa", "last_valid_scores": [0.25, 0.75]}],
        "rows": [{"round": 0, "metric": 0.5}],
        "assignments": [],
    }
    return Checkpoint(server_round, units, state, fingerprint or {"seed": 0}, rng, torch_rng)


def test_a_checkpoint_round_trips(tmp_path):
    saved = _checkpoint()
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
    assert loaded.server_round == 2 and loaded.strategy == saved.strategy and loaded.fingerprint == {"seed": 0}
    assert loaded.units.keys() == saved.units.keys()
    for key, value in saved.units.items():
        np.testing.assert_array_equal(loaded.units[key], value)
        assert loaded.units[key].dtype == value.dtype
    assert [p.name for p in checkpoint_path(tmp_path).parent.iterdir()] == ["state.npz"]


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path):
    save_checkpoint(tmp_path, _checkpoint(server_round=1))
    before = checkpoint_path(tmp_path).read_bytes()

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_file(checkpoint_path(tmp_path)) as stream:
        stream.write(b"half a checkpoint")
        raise Boom
    assert checkpoint_path(tmp_path).read_bytes() == before
    assert load_checkpoint(tmp_path).server_round == 1
    assert [p.name for p in checkpoint_path(tmp_path).parent.iterdir()] == ["state.npz"]  # no temporary left


def test_a_write_replaces_by_rename_so_an_open_reader_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.npz"
    write_npz_atomic(path, {"v": np.zeros(3)})
    with open(path, "rb") as old:
        write_npz_atomic(path, {"v": np.ones(3)})
        np.testing.assert_array_equal(np.load(old)["v"], np.zeros(3))  # the old inode, untouched
    np.testing.assert_array_equal(np.load(path)["v"], np.ones(3))


def test_no_checkpoint_names_resume(tmp_path):
    with pytest.raises(ConfigError, match=r"^resume: no checkpoint at .*state\.npz"):
        load_checkpoint(tmp_path)


def test_a_different_configuration_is_refused_naming_each_differing_key(shipped_run_config):
    config = dict(shipped_run_config)
    base = config_fingerprint(config, LAYERS, UNITS)
    check_fingerprint(base, config_fingerprint(dict(config), LAYERS, UNITS), "run")
    other = dict(config, **{"peft.method": "full", "model.name": "/models/other"})
    with pytest.raises(ConfigError) as error:
        check_fingerprint(base, config_fingerprint(other, LAYERS[:1], UNITS[:1]), "run")
    message = str(error.value)
    assert message.startswith("resume: the checkpoint in run was written by a different configuration")
    assert "(layers, model.name, peft.method, units differ" in message
    assert 'model.name: checkpoint "builtin:tiny-vilt-easyvqa", this run "/models/other"' in message


def test_where_and_how_long_a_run_goes_may_change_on_resume(shipped_run_config):
    config = dict(shipped_run_config)
    base = config_fingerprint(config, LAYERS, UNITS)
    config.update(
        {
            "num-server-rounds": 50,
            "run-name": "x",
            "device": "cpu",
            "resume": "/out/x",
            "round-timeout": 10.0,
            "min-clients": 5,
            "model.cache-dir": "/cache",
            "eval.batch-size": 8,
        }
    )
    check_fingerprint(base, config_fingerprint(config, LAYERS, UNITS), "run")
    config.update({"seed": 1, "train.lr": 0.1})
    with pytest.raises(ConfigError, match=r"\(seed, train\.lr differ: seed: checkpoint 0, this run 1; train\.lr"):
        check_fingerprint(base, config_fingerprint(config, LAYERS, UNITS), "run")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.random(), np.random.normal(), torch.rand(1)  # mid-stream, with a cached gaussian
    save_checkpoint(tmp_path, _checkpoint())
    expected = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    loaded = load_checkpoint(tmp_path)
    restore_rng(loaded.rng, loaded.torch_rng)
    assert (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist()) == expected


def test_client_state_returns_the_newest_up_to_a_round_and_keeps_two(tmp_path):
    store = ClientStateStore(tmp_path, run_key(tmp_path / "outputs" / "run one"), partition_id=3)
    assert store.load("head", 10) is None
    for server_round in (1, 2, 3):
        store.save("head", server_round, {"w": np.full(2, float(server_round))})
    assert sorted(p.name for p in store.folder.iterdir()) == ["head-round-2.npz", "head-round-3.npz"]
    assert store.load("head", 2)[0] == 2 and store.load("head", 9)[1]["w"].tolist() == [3.0, 3.0]
    assert store.load("head", 1) is None
    store.discard("head", from_round=3)
    assert store.load("head", 9)[0] == 2
    assert store.folder.parts[-2].startswith("run_one-") and store.folder.name == "partition-3"


def test_run_keys_and_state_dirs(tmp_path, monkeypatch):
    assert run_key(tmp_path / "a") != run_key(tmp_path / "b" / "a")
    assert run_key(tmp_path / "a") == run_key(str(tmp_path / "x" / ".." / "a"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    assert state_dir(None) == tmp_path / "home" / "f3ocus-state"
    assert state_dir(str(tmp_path / "s")) == tmp_path / "s"
    with pytest.raises(ValueError, match="run key"):
        ClientStateStore(tmp_path, "../escape", 0)
