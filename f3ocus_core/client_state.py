"""A client's state on its node's disk, so that a restarted SuperNode (or a resumed run) picks up
where it was.

What a client keeps across messages (its personal answer head, the global units received with this
round's ``query``) lives in Flower's ``context.state``, which is in memory and lost when the
SuperNode restarts or the run is resumed under a new Flower run. :class:`ClientStateStore` keeps a
copy of each under ``<state-dir>/<run key>/partition-<id>/<name>-round-<r>.npz``:

- ``state-dir`` is the node's ``--node-config "state-dir=..."``, by default
  ``$FLWR_HOME/f3ocus-state`` (Flower's home, ``~/.flwr`` when ``FLWR_HOME`` is unset);
- the run key (:func:`run_key`) names the run's output folder, which a resumed run shares; the
  server sends it with every message;
- every state is saved with the round that produced it, and :meth:`ClientStateStore.load` returns
  the newest one up to a given round, so a round redone after a server crash starts from the state
  the first attempt started from.

Files are written atomically (temporary file, then rename; :func:`~f3ocus_core.checkpoint.write_npz_atomic`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from f3ocus_core.checkpoint import read_npz, write_npz_atomic

_FILE = re.compile(r"^(?P<name>[a-z]+)-round-(?P<round>\d+)\.npz$")


def run_key(run_folder: str | Path) -> str:
    """A file-name-safe key of a run: its output folder's name and a short hash of its full path."""
    folder = Path(run_folder).resolve()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name) or "run"
    return f"{safe}-{hashlib.sha256(str(folder).encode()).hexdigest()[:10]}"


def state_dir(configured: str | None) -> Path:
    """The node's state folder: ``configured`` (the node config's ``state-dir``) if given, else
    ``$FLWR_HOME/f3ocus-state`` (``~/.flwr/f3ocus-state`` when ``FLWR_HOME`` is unset)."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser() / "f3ocus-state"


class ClientStateStore:
    """Named, round-stamped array states of one client (one partition of one run) on disk.

    Parameters
    ----------
    root : Path
        The node's state folder (:func:`state_dir`).
    key : str
        The run key (:func:`run_key`).
    partition_id : int
        The client's partition id.
    """

    def __init__(self, root: str | Path, key: str, partition_id: int) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or key in {".", ".."}:
            raise ValueError(f"run key {key!r} is not a plain file name.")
        self.folder = Path(root) / key / f"partition-{int(partition_id)}"

    def _rounds(self, name: str) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [
            (int(m["round"]), path)
            for path in self.folder.iterdir()
            if (m := _FILE.match(path.name)) and m["name"] == name
        ]
        return sorted(found)

    def save(self, name: str, server_round: int, state: dict[str, np.ndarray], keep: int = 2) -> Path:
        """Save ``state`` as ``name`` of ``server_round``; keep only the newest ``keep`` rounds of ``name``."""
        if not re.fullmatch(r"[a-z]+", name):
            raise ValueError(f"state name {name!r}: use lower-case letters only.")
        path = write_npz_atomic(self.folder / f"{name}-round-{int(server_round)}.npz", state)
        for _, old in self._rounds(name)[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load(self, name: str, max_round: int) -> tuple[int, dict[str, np.ndarray]] | None:
        """The newest saved ``name`` of a round <= ``max_round`` and that round, or None."""
        candidates = [(r, path) for r, path in self._rounds(name) if r <= max_round]
        if not candidates:
            return None
        server_round, path = candidates[-1]
        return server_round, read_npz(path)

    def discard(self, name: str, from_round: int) -> None:
        """Delete the saved ``name`` of rounds >= ``from_round`` (left by an attempt that was abandoned)."""
        for server_round, path in self._rounds(name):
            if server_round >= from_round:
                path.unlink(missing_ok=True)
