"""The server's checkpoint: everything a run needs to continue after a crash, in one file.

After every round the server writes ``<run folder>/checkpoint/state.npz``: the global units, the
round just completed, the strategy's state (last valid scores per client, the clients seen, the
recorder's rows and assignments), the RNG states (Python ``random``, NumPy's global generator,
torch's CPU generator) and the configuration fingerprint. The file is written to a temporary name
in the same folder, flushed to disk and renamed over the old one (:func:`write_npz_atomic`), so a
crash at any moment leaves either the previous checkpoint or the new one, never a torn file.

A run started with ``resume='<run folder>'`` loads it (:func:`load_checkpoint`) and refuses it when
the fingerprint differs from the new run's (:func:`check_fingerprint`): a checkpoint of another
model, PEFT mode, layer set, task or seed would silently continue a different experiment.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from f3ocus_core.errors import ConfigError

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.npz"
FORMAT_VERSION = 1

#: Run-config keys that may differ between a run and its resumption: where it runs and for how
#: long, not what it computes. Every other key is part of the fingerprint.
MAY_CHANGE = frozenset(
    {
        "num-server-rounds",
        "run-name",
        "output-dir",
        "resume",
        "round-timeout",
        "min-clients",
        "device",
        "eval.batch-size",
        "model.cache-dir",
        "tracking.to",
        "tracking.uri",
        "tracking.experiment",
    }
)

_UNIT_PREFIX = "units/"
_META = "meta"
_TORCH_RNG = "rng/torch"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces ``path`` only when the ``with`` block ends without error.

    The data go to a temporary file in the same folder, are flushed with ``fsync`` and then renamed
    over ``path`` with :func:`os.replace` (atomic on POSIX and Windows within one file system), so
    readers see the old file or the whole new one, never part of it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (``.npz``) through :func:`atomic_file`."""
    with atomic_file(path) as stream:
        np.savez(stream, allow_pickle=True, **arrays)
    return Path(path)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, loaded into memory (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def config_fingerprint(
    run_config: Mapping[str, object], layers: list[str], units: list[list[str]]
) -> dict[str, object]:
    """What defines a run's computation: its run config (``[tool.flwr.app.config]`` with the run's
    overrides, by config key, less :data:`MAY_CHANGE`), the model's layer names and each layer's
    unit names."""
    kept = {key: value for key, value in run_config.items() if key not in MAY_CHANGE}
    return json.loads(json.dumps({**kept, "layers": list(layers), "units": [list(names) for names in units]}))


def check_fingerprint(saved: dict[str, object], current: dict[str, object], folder: str | Path) -> None:
    """Refuse to resume from a checkpoint whose fingerprint differs from this run's.

    Raises
    ------
    ConfigError
        Naming every differing key with the checkpoint's and this run's value.
    """
    differing = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    if not differing:
        return

    def shown(value: object) -> str:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    details = "; ".join(
        f"{key}: checkpoint {shown(saved.get(key))}, this run {shown(current.get(key))}" for key in differing
    )
    raise ConfigError(
        f"resume: the checkpoint in {folder} was written by a different configuration "
        f"({', '.join(differing)} differ: {details}). Resume with the run's own settings, "
        "or start a new run without resume."
    )


def capture_rng() -> tuple[dict, np.ndarray]:
    """The states of Python's ``random``, NumPy's global generator (JSON-able) and torch's CPU generator."""
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple), "legacy=True gives the tuple form of the MT19937 state"
    kind, keys, pos, has_gauss, cached = legacy
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return state, torch.get_rng_state().numpy().copy()


def restore_rng(state: dict, torch_state: np.ndarray) -> None:
    """Set the generators to what :func:`capture_rng` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.from_numpy(np.asarray(torch_state, dtype=np.uint8).copy()))


@dataclass
class Checkpoint:
    """One checkpoint: the state after ``server_round`` was completed (round 0: the starting model
    was evaluated)."""

    server_round: int
    units: dict[str, np.ndarray]
    strategy: dict
    fingerprint: dict[str, object]
    rng: dict = field(default_factory=dict)
    torch_rng: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))


def checkpoint_path(run_folder: str | Path) -> Path:
    """Where a run folder keeps its checkpoint."""
    return Path(run_folder) / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(run_folder: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically to ``run_folder/checkpoint/state.npz``, replacing the previous one."""
    meta = {
        "version": FORMAT_VERSION,
        "round": int(checkpoint.server_round),
        "strategy": checkpoint.strategy,
        "fingerprint": checkpoint.fingerprint,
        "rng": checkpoint.rng,
    }
    arrays = {f"{_UNIT_PREFIX}{key}": np.asarray(value) for key, value in checkpoint.units.items()}
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays[_TORCH_RNG] = np.asarray(checkpoint.torch_rng, dtype=np.uint8)
    return write_npz_atomic(checkpoint_path(run_folder), arrays)


def load_checkpoint(run_folder: str | Path) -> Checkpoint:
    """Read the checkpoint of ``run_folder``.

    Raises
    ------
    ConfigError
        If the folder holds no checkpoint, a damaged one (not a zip, truncated, keys or metadata
        missing) or one this version cannot read, naming ``resume`` and the file.
    """
    path = checkpoint_path(run_folder)
    if not path.is_file():
        raise ConfigError(
            f"resume: no checkpoint at {path}; give the folder of a run that completed at least "
            "its round-0 evaluation (it holds checkpoint/state.npz), or leave resume empty."
        )
    try:
        arrays = read_npz(path)
        meta = json.loads(arrays.pop(_META).tobytes().decode())
        version = meta.get("version")
        if version == FORMAT_VERSION:
            torch_rng = arrays.pop(_TORCH_RNG)
            units = {key[len(_UNIT_PREFIX) :]: value for key, value in arrays.items() if key.startswith(_UNIT_PREFIX)}
            checkpoint = Checkpoint(
                int(meta["round"]), units, meta["strategy"], meta["fingerprint"], meta["rng"], torch_rng
            )
    except Exception as error:  # a damaged file: whatever zipfile, np.load or json raise
        raise ConfigError(
            f"resume: the checkpoint {path} cannot be read ({type(error).__name__}: {error}); the "
            "file is damaged or truncated. Restore it from a backup, or start a new run without "
            "resume."
        ) from None
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"resume: {path} has checkpoint format {version}, this version reads "
            f"{FORMAT_VERSION}; start a new run without resume."
        )
    return checkpoint
