"""The on-disk cache of a client's prepared data: a hit skips preparing, changed settings or source
files miss, and an unreadable entry is prepared again."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from f3ocus_core.data.cache import cache_key, cached_client_data
from f3ocus_core.data.tasks import DataSettings, load_client_data

SETTINGS = DataSettings(task="easy-vqa", partitioning="iid", max_train=12, max_test=6)


class CountingBuild:
    """``load_client_data``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, settings, partition_id, num_partitions):
        self.calls += 1
        return load_client_data(settings, partition_id, num_partitions)


def _same(a, b) -> None:
    assert (a.name, a.kind, a.labels) == (b.name, b.kind, b.labels)
    for split in ("train", "test"):
        left, right = getattr(a, split), getattr(b, split)
        assert left["question"] == right["question"] and left["answers"] == right["answers"]
        assert left[0]["image"].tobytes() == right[0]["image"].tobytes()


def test_a_second_load_is_a_hit_with_the_same_data(tmp_path):
    build = CountingBuild()
    first = cached_client_data(SETTINGS, 1, 3, tmp_path, build)
    second = cached_client_data(SETTINGS, 1, 3, tmp_path, build)
    assert build.calls == 1
    _same(first, load_client_data(SETTINGS, 1, 3))
    _same(second, first)
    assert [p.name for p in tmp_path.iterdir()] == [cache_key(SETTINGS, 1, 3)], "no scratch folder is left"


@pytest.mark.parametrize(
    "change",
    [
        {"max_train": 10},
        {"seed": 1},
        {"partitioning": "dirichlet"},
        {"alpha": 0.3},
    ],
)
def test_changed_settings_miss(tmp_path, change):
    build = CountingBuild()
    cached_client_data(SETTINGS, 0, 2, tmp_path, build)
    changed = cached_client_data(replace(SETTINGS, **change), 0, 2, tmp_path, build)
    assert build.calls == 2
    _same(changed, load_client_data(replace(SETTINGS, **change), 0, 2))


def test_another_partition_misses(tmp_path):
    build = CountingBuild()
    cached_client_data(SETTINGS, 0, 2, tmp_path, build)
    cached_client_data(SETTINGS, 1, 2, tmp_path, build)
    cached_client_data(SETTINGS, 0, 3, tmp_path, build)
    assert build.calls == 3


def test_changed_source_files_change_the_key(tmp_path):
    data = tmp_path / "data"
    (data / "slake" / "Slake1.0").mkdir(parents=True)
    index = data / "slake" / "Slake1.0" / "train.json"
    index.write_text("[]")
    settings = replace(SETTINGS, task="task1-domain", data_path=str(data))
    before = cache_key(settings, 0, 5)
    assert cache_key(settings, 0, 5) == before
    index.write_text('[{"a": 1}]')
    os.utime(index, ns=(1, 1))
    assert cache_key(settings, 0, 5) != before


@pytest.mark.parametrize("damage", ["meta", "arrow", "state"])
def test_a_damaged_entry_is_rebuilt(tmp_path, damage):
    build = CountingBuild()
    cached_client_data(SETTINGS, 0, 2, tmp_path, build)
    entry = tmp_path / cache_key(SETTINGS, 0, 2)
    if damage == "meta":
        (entry / "client.json").write_text('{"name": ')
    elif damage == "arrow":
        arrow = next((entry / "train").glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[:100])
    else:
        (entry / "test" / "state.json").unlink()
    data = cached_client_data(SETTINGS, 0, 2, tmp_path, build)
    assert build.calls == 2
    _same(data, load_client_data(SETTINGS, 0, 2))
    _same(cached_client_data(SETTINGS, 0, 2, tmp_path, build), data)
    assert build.calls == 2, "the rebuilt entry is a hit again"
