"""Shared fixtures: a small run config and a prebuilt tiny base checkpoint shared by the tests."""

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A cache folder holding a base checkpoint trained for a few steps (built once per session)."""
    from f3ocus_core.pretrain import ensure_base_checkpoint

    cache = tmp_path_factory.mktemp("model-cache")
    ensure_base_checkpoint(cache, steps=30, seed=0)
    return cache


@pytest.fixture()
def small_run_config(model_cache, tmp_path) -> dict:
    """The shipped run config, shrunk to seconds: 2 rounds, tiny data, quick base checkpoint."""
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update({
        "num-server-rounds": 2,
        "run-name": "test-run",
        "output-dir": str(tmp_path / "outputs"),
        "model.cache-dir": str(model_cache),
        "model.pretrain-steps": 30,
        "data.max-train-per-client": 24,
        "data.max-test-per-client": 16,
        "selection.budget": "2",
        "selection.params": "",
        "train.batch-size": 8,
    })
    return config
