"""Shared pytest fixtures for the data tests: one tree of real-format fixtures per test session.

Import the fixtures into a test module (``from fixtures_data import data_root``) to use them. Tests
must not modify these trees; tests that corrupt files copy what they need into ``tmp_path`` first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from f3ocus_core.data.fixtures import write_task_fixture

MEDICAL_TASKS = (
    "task1-domain",
    "task2-modality",
    "task3-medvqa-fl",
    "task4-openi",
    "task5-mimic-cxr",
    "task6-mixed",
)


_ROOTS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``data.path`` root holding the fixtures of all six medical tasks (MedVQA-FL built).

    Written once per session even when several test modules import this fixture.
    """
    if "data" not in _ROOTS:
        root = tmp_path_factory.mktemp("data")
        for task in MEDICAL_TASKS:
            write_task_fixture(root, task)
        _ROOTS["data"] = root
    return _ROOTS["data"]
