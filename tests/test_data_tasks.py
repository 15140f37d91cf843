"""The task recipes: client counts, non-empty parts, one code path, caps, reproducible labels, errors."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import datasets
import pytest
from PIL import Image

from f3ocus_core.data.chest_xray import CHEST_LABELS
from f3ocus_core.data.tasks import (
    ALIASES,
    CONFIG_KEYS,
    FIXED_CLIENTS,
    TASKS,
    DataSettings,
    check_settings,
    load_client_data,
)
from f3ocus_core.errors import ConfigError
from tests.data_fixtures import MEDICAL_TASKS

EXPECTED_CLIENTS = {
    "task1-domain": 5,
    "task2-modality": 8,
    "task3-medvqa-fl": 9,
    "task4-openi": 4,
    "task5-mimic-cxr": 10,
    "task6-mixed": 5,
}


@pytest.mark.parametrize("task", MEDICAL_TASKS)
def test_every_client_has_train_and_test(task: str, data_root: Path):
    n = FIXED_CLIENTS[task]
    assert n == EXPECTED_CLIENTS[task]
    settings = DataSettings(task=task, data_path=str(data_root), max_train=0, max_test=0)
    clients = [load_client_data(settings, i, n) for i in range(n)]
    assert len({c.name for c in clients}) == n
    for client in clients:
        assert len(client.train) > 0 and len(client.test) > 0
        assert client.name.startswith(f"{task}/")
        answers = {a for part in (client.train, client.test) for row in part["answers"] for a in row}
        if client.kind == "vqa":
            assert client.labels == sorted(answers)
        else:
            assert client.labels == list(CHEST_LABELS) and answers <= set(CHEST_LABELS)
        assert set(client.train["client"]) == {client.name}
        assert isinstance(client.train[0]["image"], Image.Image)


def test_mixed_task_has_three_vqa_and_two_classification_clients(data_root: Path):
    settings = DataSettings(task="6", data_path=str(data_root))
    kinds = [load_client_data(settings, i, 5).kind for i in range(5)]
    assert kinds == ["vqa", "vqa", "vqa", "multilabel", "multilabel"]


def test_task2_clients_are_one_modality_each(data_root: Path):
    settings = DataSettings(task="task2-modality", data_path=str(data_root))
    ct = load_client_data(settings, 0, 8)
    assert "ct" in ct.labels and "mri" not in ct.labels
    oct_client = load_client_data(settings, 7, 8)
    assert set(oct_client.train["source"]) == {"octmnist"}


def test_task3_accepts_the_build_folder_itself(data_root: Path):
    direct = load_client_data(DataSettings(task="3", data_path=str(data_root / "medvqa-fl")), 4, 9)
    nested = load_client_data(DataSettings(task="3", data_path=str(data_root)), 4, 9)
    assert direct.name == nested.name == "task3-medvqa-fl/fundus"
    assert direct.train["question"] == nested.train["question"]


def test_aliases_and_names_give_the_same_clients(data_root: Path):
    assert {str(i): name for i, name in enumerate(MEDICAL_TASKS, 1)} == ALIASES
    for alias, name in ALIASES.items():
        assert TASKS[alias] is TASKS[name] and FIXED_CLIENTS[alias] == FIXED_CLIENTS[name]
    a = load_client_data(DataSettings(task="1", data_path=str(data_root)), 1, 5)
    b = load_client_data(DataSettings(task="task1-domain", data_path=str(data_root)), 1, 5)
    assert a.labels == b.labels and a.train["question"] == b.train["question"]


def test_caps_are_seeded_subsamples_and_labels_do_not_change(data_root: Path):
    full = load_client_data(DataSettings(task="4", data_path=str(data_root), max_train=0, max_test=0), 3, 4)
    settings = DataSettings(task="4", data_path=str(data_root), max_train=3, max_test=1, seed=0)
    capped = [load_client_data(settings, 3, 4) for _ in range(2)]
    assert (len(capped[0].train), len(capped[0].test)) == (3, 1)
    paths = [c.train.cast_column("image", datasets.Image(decode=False))["image"] for c in capped]
    assert paths[0] == paths[1]
    all_paths = full.train.cast_column("image", datasets.Image(decode=False))["image"]
    assert all(p in all_paths for p in paths[0])
    vqa = load_client_data(DataSettings(task="1", data_path=str(data_root), max_train=2, max_test=1), 0, 5)
    uncapped = DataSettings(task="1", data_path=str(data_root), max_train=0, max_test=0)
    full_vqa = load_client_data(uncapped, 0, 5)
    assert vqa.labels == full_vqa.labels and len(vqa.train) == 2
    assert full.labels == capped[0].labels


def test_easy_vqa_is_still_registered():
    assert "easy-vqa" in TASKS and "easy-vqa" not in FIXED_CLIENTS
    check_settings(DataSettings(), 3)


def test_settings_defaults_are_the_shipped_run_config(shipped_run_config):
    fields = {field.name for field in dataclasses.fields(DataSettings)}
    assert set(CONFIG_KEYS) == fields
    assert {key for key in shipped_run_config if key.startswith("data.")} <= set(CONFIG_KEYS.values())
    defaults = DataSettings()
    for field, key in CONFIG_KEYS.items():
        value = getattr(defaults, field)
        value = ",".join(value) if isinstance(value, tuple) else value  # per-partition lists
        assert value == shipped_run_config[key], (field, key)


@pytest.mark.parametrize(
    "field, value",
    [
        ("task", "task7"),
        ("partitioning", "random"),
        ("alpha", 0.0),
        ("alpha", -0.5),
        ("alpha", math.nan),
        ("max_train", -1),
        ("max_test", -1),
    ],
)
def test_settings_refuse_bad_values_naming_the_key(field: str, value: object):
    with pytest.raises(ConfigError, match=f"^{CONFIG_KEYS[field]}:"):
        DataSettings(**{field: value})


def test_zero_caps_mean_no_cap_and_are_valid():
    settings = DataSettings(partitioning="iid", max_train=0, max_test=0)
    assert (settings.max_train, settings.max_test) == (0, 0)


def test_unknown_task_and_wrong_client_count_name_the_key():
    with pytest.raises(ConfigError, match="^task: unknown task 'task7'"):
        DataSettings(task="task7")
    with pytest.raises(ConfigError, match="^task: 'task3-medvqa-fl' defines 9 clients.*num-supernodes=9"):
        check_settings(DataSettings(task="task3-medvqa-fl"), 4)


def test_missing_data_path_names_the_config_key():
    with pytest.raises(ConfigError, match="^data.path: task 'task4-openi' reads files"):
        load_client_data(DataSettings(task="task4-openi"), 0, 4)


def test_missing_build_says_how_to_build(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="f3ocus-build-medvqa --medmnist-dir"):
        load_client_data(DataSettings(task="3", data_path=str(tmp_path)), 0, 9)


def _copy_slake(data_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(data_root / "slake", tmp_path / "slake")
    return next((tmp_path / "slake").rglob("xmlab2/source.jpg"))


def test_image_that_does_not_decode_is_named(data_root: Path, tmp_path: Path):
    image = _copy_slake(data_root, tmp_path)
    image.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"xmlab2/source\.jpg does not decode"):
        load_client_data(DataSettings(task="1", data_path=str(tmp_path)), 0, 5)


def test_missing_image_is_named(data_root: Path, tmp_path: Path):
    image = _copy_slake(data_root, tmp_path)
    image.unlink()
    with pytest.raises(FileNotFoundError, match=r"xmlab2/source\.jpg is missing"):
        load_client_data(DataSettings(task="1", data_path=str(tmp_path)), 0, 5)


def test_client_without_examples_is_an_error(data_root: Path, tmp_path: Path):
    shutil.copytree(data_root / "slake", tmp_path / "slake")
    (next((tmp_path / "slake").rglob("test.json"))).write_text("[]")
    with pytest.raises(ValueError, match="'task1-domain/slake' has no test examples"):
        load_client_data(DataSettings(task="1", data_path=str(tmp_path)), 0, 5)
