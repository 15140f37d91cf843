"""Shared fixtures: a small run config, a prebuilt tiny base checkpoint and a tree of data fixtures."""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    """Under pytest-xdist (``make test`` runs two workers on 2 cores), one torch thread per worker
    and per process it starts: two workers with two threads each oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A cache folder holding a base checkpoint trained for a few steps (built once per session)."""
    from f3ocus_core.pretrain import ensure_base_checkpoint

    cache = tmp_path_factory.mktemp("model-cache")
    ensure_base_checkpoint(cache, steps=30, seed=0)
    return cache


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A ``data.path`` root holding the fixtures of all six medical tasks (MedVQA-FL built), once per session.

    Tests must not modify it; a test that corrupts files copies what it needs into ``tmp_path`` first.
    """
    from tests.data_fixtures import MEDICAL_TASKS, write_task_fixture

    root = tmp_path_factory.mktemp("data")
    for task in MEDICAL_TASKS:
        write_task_fixture(root, task)
    return root


@pytest.fixture(scope="session")
def shipped_run_config() -> Mapping[str, object]:
    """``[tool.flwr.app.config]`` of pyproject.toml (read-only): the run config ``flwr run .`` starts from."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return MappingProxyType(pyproject["tool"]["flwr"]["app"]["config"])


def small_overrides(root: Path, cache: Path) -> dict:
    """What shrinks the shipped run config to seconds: 2 rounds, tiny data, quick base checkpoint
    (outputs under ``root``, the base in ``cache``). Also what tests/protocol_run.py regenerates the
    two-exchange fixture with, so that the fixture and the test run the same config."""
    return {
        "num-server-rounds": 2,
        "run-name": "test-run",
        "output-dir": str(root / "outputs"),
        "model.cache-dir": str(cache),
        "model.pretrain-steps": 30,
        "data.max-train-per-client": 24,
        "data.max-test-per-client": 16,
        "selection.budget": "2",
        "selection.params": "",
        "train.batch-size": 8,
    }


@pytest.fixture()
def small_run_config(shipped_run_config, model_cache, tmp_path) -> dict:
    """The shipped run config, shrunk to seconds (:func:`small_overrides`)."""
    return {**shipped_run_config, **small_overrides(tmp_path, model_cache)}


@pytest.fixture()
def no_figures(monkeypatch):
    """Skip drawing the run's figures (tested elsewhere; half the time of a one-round run)."""
    from f3ocus_core.recorder import RunRecorder
    from f3ocus_core.selection import figures

    for owner, name in (
        (RunRecorder, "_plot_metric"),
        (RunRecorder, "_plot_assignments"),
        (RunRecorder, "_plot_coverage_diagnostics"),
        (figures, "plot_front"),
        (figures, "plot_coverage"),
    ):
        monkeypatch.setattr(owner, name, lambda *args, **kwargs: None)


@pytest.fixture(autouse=True)
def _own_flower_home(tmp_path, monkeypatch) -> None:
    """Every test gets its own ``FLWR_HOME``, so in-process clients keep their state on disk
    (:mod:`f3ocus_core.client_state`) under the test's folder, not in the user's ``~/.flwr``."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
