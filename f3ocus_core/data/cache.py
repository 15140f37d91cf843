"""A client's prepared data cached on the node's disk, so that a new process does not prepare it again.

Preparing a client's data (reading the sources, partitioning, capping) takes seconds; in a
deployment, where every message may start a fresh process, it would repeat per message. The cache
keeps the result in ``datasets`` format (``save_to_disk``; loading is a memory map) in
``<cache_dir>/<key>/``, where the key is a hash of everything the result depends on:

- the :class:`~f3ocus_core.data.tasks.DataSettings`, the partition id and the number of partitions;
- the code that prepares data (the source of the ``f3ocus_core.data`` package) and the installed
  ``easy-vqa`` and ``datasets`` versions;
- the files of ``data_path`` (their names, sizes and modification times, up to four folders deep; a
  folder of more than :data:`LARGE_FOLDER` entries, e.g. of images, counts by its entry count and
  modification time).

An entry is written to a temporary folder beside its place and renamed into it when complete, so a
reader never sees half an entry; an entry that does not load (a removed or truncated file) is
deleted and prepared again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import datasets

from f3ocus_core.data import ClientData
from f3ocus_core.data.tasks import DataSettings, load_client_data

#: Bump when the layout of an entry changes.
FORMAT_VERSION = 1
#: A folder with more entries than this is fingerprinted by its count and mtime, not walked.
LARGE_FOLDER = 2000
_DEPTH = 4
_META = "client.json"

Builder = Callable[[DataSettings, int, int], ClientData]


def cache_key(settings: DataSettings, partition_id: int, num_partitions: int) -> str:
    """The hash naming the entry of these settings (see the module docstring for what it covers)."""
    parts = {
        "format": FORMAT_VERSION,
        "settings": asdict(settings),
        "partition": [partition_id, num_partitions],
        "code": _code_fingerprint(),
        "packages": {name: _version(name) for name in ("easy-vqa", "datasets")},
        "files": _tree_fingerprint(Path(settings.data_path)) if settings.data_path else [],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def cached_client_data(
    settings: DataSettings,
    partition_id: int,
    num_partitions: int,
    cache_dir: str | Path,
    build: Builder = load_client_data,
) -> ClientData:
    """Client ``partition_id``'s data from the cache in ``cache_dir``, prepared with ``build`` and
    stored there first if it is missing or unreadable."""
    root = Path(cache_dir)
    entry = root / cache_key(settings, partition_id, num_partitions)
    if entry.exists():
        try:
            return _load(entry)
        except Exception:  # noqa: BLE001 - any unreadable entry is rebuilt
            shutil.rmtree(entry, ignore_errors=True)
    data = build(settings, partition_id, num_partitions)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
    try:
        data.train.save_to_disk(str(scratch / "train"))
        data.test.save_to_disk(str(scratch / "test"))
        (scratch / _META).write_text(json.dumps({"name": data.name, "kind": data.kind, "labels": data.labels}))
        with contextlib.suppress(OSError):  # another process put the same entry in place first
            os.rename(scratch, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _load(entry) if entry.exists() else data


def _load(entry: Path) -> ClientData:
    meta = json.loads((entry / _META).read_text())
    train = datasets.load_from_disk(str(entry / "train"))
    test = datasets.load_from_disk(str(entry / "test"))
    return ClientData(name=meta["name"], kind=meta["kind"], labels=list(meta["labels"]), train=train, test=test)


def _code_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _tree_fingerprint(root: Path) -> list:
    """(relative path, size, mtime_ns) of the files under ``root``; see :data:`LARGE_FOLDER`."""
    if not root.exists():
        return [str(root), "missing"]
    found: list = []

    def walk(folder: Path, depth: int) -> None:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        if len(entries) > LARGE_FOLDER:
            found.append([str(folder.relative_to(root)), "folder", len(entries), folder.stat().st_mtime_ns])
            return
        for item in entries:
            if item.is_dir(follow_symlinks=True):
                if depth < _DEPTH:
                    walk(Path(item.path), depth + 1)
            else:
                stat = item.stat(follow_symlinks=True)
                found.append([str(Path(item.path).relative_to(root)), stat.st_size, stat.st_mtime_ns])

    walk(root, 1)
    return found
