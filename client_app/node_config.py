"""A SuperNode's own settings: the ``--node-config`` keys a client reads, checked once per message.

Flower's simulation sets ``partition-id`` and ``num-partitions``; a deployed SuperNode gets them,
and the optional keys, from ``flower-supernode --node-config "partition-id=0 num-partitions=2 ..."``.
A misspelt key would otherwise be ignored silently (a node training on the wrong data or device),
so an unknown key stops the ClientApp with an error that lists the keys it accepts; the server then
logs that client as failed and the run goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_PATH = "data-path"
DEVICE = "device"
STATE_DIR = "state-dir"

NODE_CONFIG_KEYS = (PARTITION_ID, NUM_PARTITIONS, DATA_PATH, DEVICE, STATE_DIR)


@dataclass(frozen=True)
class NodeSettings:
    """What one node says about itself.

    Parameters
    ----------
    partition_id, num_partitions : int
        This client's partition of the task data, ``0 <= partition_id < num_partitions``.
    data_path : str | None
        The node's data folder; overrides the run's ``data.path`` (``None``: use the run's).
    device : str | None
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; overrides the run's ``device`` (``None``: use it).
    state_dir : str | None
        Where the client keeps what must survive a restart (``None``: under the Flower home).
    """

    partition_id: int
    num_partitions: int
    data_path: str | None = None
    device: str | None = None
    state_dir: str | None = None


def parse_node_config(node_config: Mapping[str, object]) -> NodeSettings:
    """The node's settings from ``context.node_config``.

    Raises
    ------
    ValueError
        Naming the key: an unknown key, a missing or non-integer ``partition-id`` or
        ``num-partitions``, or a ``partition-id`` outside ``0..num-partitions-1``.
    """
    unknown = sorted(set(node_config) - set(NODE_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"node config: unknown key(s) {unknown}; a node accepts {list(NODE_CONFIG_KEYS)}.")
    partition_id = _integer(node_config, PARTITION_ID)
    num_partitions = _integer(node_config, NUM_PARTITIONS)
    if num_partitions < 1 or not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config: {PARTITION_ID}={partition_id} must lie in 0..{NUM_PARTITIONS}-1 "
            f"({NUM_PARTITIONS}={num_partitions})."
        )
    return NodeSettings(
        partition_id,
        num_partitions,
        _text(node_config, DATA_PATH),
        _text(node_config, DEVICE),
        _text(node_config, STATE_DIR),
    )


def _integer(node_config: Mapping[str, object], key: str) -> int:
    if key not in node_config:
        raise ValueError(f'node config: {key} is missing; start the node with --node-config "{key}=...".')
    value = node_config[key]
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"node config: {key} must be an integer, got {value!r}.")
    return int(value)


def _text(node_config: Mapping[str, object], key: str) -> str | None:
    value = node_config.get(key)
    return None if value is None or str(value).strip() == "" else str(value)
