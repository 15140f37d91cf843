"""Reading MedMNIST ``.npz`` files without loading their images into memory.

A MedMNIST file is a zip of ``.npy`` members ``{train,val,test}_{images,labels}``. The labels are
small and read whole; the images (up to 236,386 per file, more at MedMNIST+ sizes) are streamed a
chunk of rows at a time straight from the zip member, so a builder never holds a whole file. Every
member is validated (present, dtype, shape, label range) before anything is written, and each error
names the file and the key.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from f3ocus_core.data.medmnist_classes import SPLITS, MedMNISTSet


@dataclass(frozen=True)
class NpzSplit:
    """The shape of one split of a MedMNIST file, read from the ``.npy`` headers."""

    path: Path
    split: str
    count: int
    image_shape: tuple[int, ...]


def inspect_npz(path: Path, spec: MedMNISTSet) -> dict[str, NpzSplit]:
    """Validate ``path`` against ``spec`` and return its three splits.

    Checks that the file is a zip with all six members, that images are uint8 with one (N x H x W)
    or three (N x H x W x 3) channels as ``spec`` says, and that labels have one row per image with
    values inside ``spec``'s classes. Raises ``FileNotFoundError`` or ``ValueError`` naming the file
    and key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MedMNIST file {spec.flag!r} not found.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error}); download it again.") from error
    with archive:
        members = set(archive.namelist())
        splits = {}
        for split in SPLITS:
            for kind in ("images", "labels"):
                if f"{split}_{kind}.npy" not in members:
                    raise ValueError(
                        f"{path}: key {split}_{kind} is missing (found {sorted(members)}); "
                        "expected a MedMNIST file with train/val/test images and labels."
                    )
            shape, dtype = _header(archive, path, f"{split}_images")
            _check_images(path, f"{split}_images", shape, dtype, spec)
            splits[split] = NpzSplit(path, split, shape[0], tuple(shape[1:]))
    for split in SPLITS:
        read_labels(path, split, spec, expected=splits[split].count)
    return splits


def read_labels(path: Path, split: str, spec: MedMNISTSet, expected: int | None = None) -> np.ndarray:
    """The labels of ``split``: shape (N,) of class indices, or (N, 14) multi-hot for ChestMNIST."""
    key = f"{split}_labels"
    with np.load(path, allow_pickle=False) as archive:
        labels = archive[key]
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: key {key} has dtype {labels.dtype}; expected integer labels.")
    width = len(spec.labels) if spec.multilabel else 1
    if labels.ndim == 1 and width == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[1] != width:
        raise ValueError(f"{path}: key {key} has shape {labels.shape}; expected (N, {width}).")
    if expected is not None and labels.shape[0] != expected:
        raise ValueError(f"{path}: key {key} has {labels.shape[0]} rows but {split}_images has {expected} images.")
    high = 2 if spec.multilabel else len(spec.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= high):
        raise ValueError(
            f"{path}: key {key} has values in [{labels.min()}, {labels.max()}]; "
            f"{spec.flag} labels must lie in [0, {high - 1}]."
        )
    labels = labels.astype(np.int64)
    return labels if spec.multilabel else labels[:, 0]


def iter_images(path: Path, split: str, chunk: int = 2048) -> Iterator[np.ndarray]:
    """Yield the images of ``split`` one by one (uint8 arrays), reading ``chunk`` rows at a time."""
    key = f"{split}_images"
    with zipfile.ZipFile(path) as archive:
        shape, dtype = _header(archive, path, key)
        row = int(np.prod(shape[1:])) * dtype.itemsize
        with archive.open(f"{key}.npy") as member:
            _skip_header(member)
            remaining = shape[0]
            while remaining:
                take = min(chunk, remaining)
                data = member.read(take * row)
                if len(data) != take * row:
                    raise ValueError(f"{path}: key {key} is truncated; download the file again.")
                yield from np.frombuffer(data, dtype=dtype).reshape((take, *shape[1:]))
                remaining -= take


def _header(archive: zipfile.ZipFile, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of member ``key`` from its ``.npy`` header, without reading its data."""
    with archive.open(f"{key}.npy") as member:
        try:
            shape, fortran, dtype = _skip_header(member)
        except ValueError as error:
            raise ValueError(f"{path}: key {key} is not a valid .npy array ({error}).") from error
    if fortran:
        raise ValueError(f"{path}: key {key} is stored in Fortran order; expected C order as MedMNIST ships.")
    return shape, dtype


def _skip_header(member: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unsupported .npy format version {version}")


def _check_images(path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, spec: MedMNISTSet) -> None:
    if dtype != np.uint8:
        raise ValueError(f"{path}: key {key} has dtype {dtype}; MedMNIST images are uint8.")
    expected = "N x H x W" if spec.n_channels == 1 else "N x H x W x 3"
    ok = len(shape) == 3 if spec.n_channels == 1 else len(shape) == 4 and shape[3] == 3
    if not ok:
        raise ValueError(f"{path}: key {key} has shape {shape}; {spec.flag} images are {expected}.")
