"""The federated task settings, selected by one config key (``task``), each a recipe of clients.

A recipe turns (settings, partition id, number of partitions) into that client's :class:`ClientData`.
The same call serves simulation (``data_path`` from the run config) and deployment (``data_path`` from
the SuperNode's ``data-path`` node config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from f3ocus_core.data import ClientData


@dataclass(frozen=True)
class DataSettings:
    """How a client finds and splits its data.

    Parameters
    ----------
    task : str
        A key of :data:`TASKS`.
    data_path : str
        Root folder of the task's files; empty for tasks that need no files (``easy-vqa``).
    partitioning : {"iid", "dirichlet"}
        How tasks that split one data set among clients do it.
    alpha : float
        Dirichlet concentration for ``partitioning="dirichlet"``.
    seed : int
        Seed of every random split.
    max_train, max_test : int
        Cap on a client's train / test examples after partitioning (seeded subsample); 0 = no cap.
    """

    task: str = "easy-vqa"
    data_path: str = ""
    partitioning: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    max_train: int = 0
    max_test: int = 0


Recipe = Callable[[DataSettings, int, int], ClientData]


def _easy_vqa(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    from f3ocus_core.data.easy_vqa import load_client

    return load_client(settings, partition_id, num_partitions)


#: Task name -> recipe.
TASKS: dict[str, Recipe] = {"easy-vqa": _easy_vqa}

#: Task name -> the number of clients the recipe defines (tasks missing here take any number).
FIXED_CLIENTS: dict[str, int] = {}


def check_settings(settings: DataSettings, num_partitions: int) -> None:
    """Raise ``ValueError`` naming the config key if ``settings`` cannot give ``num_partitions`` clients."""
    if settings.task not in TASKS:
        raise ValueError(f"task: unknown task {settings.task!r}; choose one of {sorted(TASKS)}.")
    fixed = FIXED_CLIENTS.get(settings.task)
    if fixed is not None and fixed != num_partitions:
        raise ValueError(
            f"task: {settings.task!r} defines {fixed} clients, but the federation has "
            f"{num_partitions}; run it with num-supernodes={fixed}."
        )
    if settings.partitioning not in ("iid", "dirichlet"):
        raise ValueError(f"data.partitioning: must be 'iid' or 'dirichlet', got {settings.partitioning!r}.")
    if not settings.alpha > 0:
        raise ValueError(f"data.alpha: must be > 0, got {settings.alpha}.")


def load_client_data(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    """The data of client ``partition_id`` out of ``num_partitions`` for ``settings.task``."""
    check_settings(settings, num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}.")
    return TASKS[settings.task](settings, partition_id, num_partitions)
