"""The federated task settings, selected by one config key (``task``), each a recipe of clients.

A recipe turns (settings, partition id, number of partitions) into that client's :class:`ClientData`.
The same call serves simulation (``data_path`` from the run config) and deployment (``data_path`` from
the SuperNode's ``data-path`` node config).

Tasks (short aliases ``"1"`` .. ``"6"``); ``data_path`` is the root folder laid out as in
``docs/data.md`` (``slake/``, ``vqa-rad/``, ``vqa-med-2019/`` ... ``open-i/``, ``mimic-cxr-jpg/``,
``medvqa-fl/``):

=================== ======= ===============================================================
task                clients  partition id -> client
=================== ======= ===============================================================
``easy-vqa``        any      a share of the easy-vqa package's data (no files needed)
``task1-domain``    5        SLAKE, VQA-RAD, VQA-Med 2019, 2020, 2021 (official splits)
``task2-modality``  8        CT, MRI, X-ray (SLAKE by modality); ultrasound, dermoscopy,
                             fundus, histology, OCT (MedVQA-FL clients)
``task3-medvqa-fl`` 9        the MedVQA-FL clients, in :data:`medvqa.CLIENT_NAMES` order
``task4-openi``     4        Open-I, Dirichlet(``alpha``) label-shift parts, 15 classes
``task5-mimic-cxr`` 10       MIMIC-CXR-JPG, Dirichlet(``alpha``) label-shift parts, 15 classes
``task6-mixed``     5        VQA: SLAKE, VQA-RAD, VQA-Med 2019; classification: Open-I, MIMIC-CXR
=================== ======= ===============================================================

Tasks 1-6 fix their clients, so ``partitioning`` applies to ``easy-vqa`` only; tasks 4 and 5 are
always Dirichlet label shift (their definition in the paper), with concentration ``alpha``. VQA
clients' ``labels`` are the sorted answers of all their train and test rows (MedVQA-FL: as saved by
the build); classification clients' ``labels`` are :data:`chest_xray.CHEST_LABELS`.

Any task's clients can be made to differ as scanners do with ``shift`` (``data.shift``, a fixed
image transform per partition, :mod:`f3ocus_core.data.shifts`), applied to the client's train and
test images after its recipe; ``easy-vqa`` clients can also keep only some question families
(``questions``, ``data.questions``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from f3ocus_core.data import ClientData
from f3ocus_core.data.easy_vqa import FAMILIES, load_client, parse_families
from f3ocus_core.data.shifts import parse_shift, shift_client
from f3ocus_core.errors import ConfigError
from f3ocus_core.per_client import split_values, values_for

#: The run-config key of each :class:`DataSettings` field (``seed`` is the run's seed).
CONFIG_KEYS: dict[str, str] = {
    "task": "task",
    "data_path": "data.path",
    "partitioning": "data.partitioning",
    "alpha": "data.alpha",
    "seed": "seed",
    "max_train": "data.max-train-per-client",
    "max_test": "data.max-test-per-client",
    "shift": "data.shift",
    "questions": "data.questions",
}

#: The values of ``data.partitioning``.
PARTITIONINGS: tuple[str, ...] = ("iid", "dirichlet")


@dataclass(frozen=True)
class DataSettings:
    """How a client finds and splits its data; the defaults are those of ``pyproject.toml``.

    Parameters
    ----------
    task : str
        A key of :data:`TASKS`.
    data_path : str
        Root folder of the task's files; empty for tasks that need no files (``easy-vqa``).
    partitioning : {"iid", "dirichlet"}
        How tasks that split one data set among clients do it.
    alpha : float
        Dirichlet concentration for ``partitioning="dirichlet"`` (and for tasks 4 and 5).
    seed : int
        Seed of every random split.
    max_train, max_test : int
        Cap on a client's train / test examples after partitioning (seeded subsample); 0 = no cap.
    shift : tuple[str, ...]
        The image shift of each partition (:mod:`f3ocus_core.data.shifts`): one value for every
        client or one per partition id; a comma-separated string is split.
    questions : tuple[str, ...]
        The question families each ``easy-vqa`` partition keeps
        (:func:`f3ocus_core.data.easy_vqa.parse_families`), one value or one per partition id.

    Raises :class:`~f3ocus_core.errors.ConfigError`, its message starting with the config key (see
    :data:`CONFIG_KEYS`), if a value cannot work.
    """

    task: str = "easy-vqa"
    data_path: str = ""
    partitioning: str = "dirichlet"
    alpha: float = 0.5
    seed: int = 0
    max_train: int = 800
    max_test: int = 200
    shift: tuple[str, ...] = ("none",)
    questions: tuple[str, ...] = ("all",)

    def __post_init__(self) -> None:
        for name in ("shift", "questions"):
            value = getattr(self, name)
            object.__setattr__(
                self, name, split_values(value, CONFIG_KEYS[name]) if isinstance(value, str) else tuple(value)
            )
            if not getattr(self, name):
                raise ConfigError(f"{CONFIG_KEYS[name]}: empty.")
        for value in self.shift:
            parse_shift(value, "data.shift")
        kept = [parse_families(value, "data.questions") for value in self.questions]
        if self.task != "easy-vqa" and any(families != set(FAMILIES) for families in kept):
            raise ConfigError(f"data.questions: question families are easy-vqa's; task {self.task!r} takes only 'all'.")
        if self.task not in TASKS:
            raise ConfigError(f"task: unknown task {self.task!r}; choose one of {sorted(TASKS)}.")
        if self.partitioning not in PARTITIONINGS:
            raise ConfigError(f"data.partitioning: must be one of {list(PARTITIONINGS)}, got {self.partitioning!r}.")
        if not self.alpha > 0:
            raise ConfigError(f"data.alpha: must be > 0, got {self.alpha}.")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"{CONFIG_KEYS[name]}: must be >= 0 (0 = no cap), got {value}.")


Recipe = Callable[[DataSettings, int, int], ClientData]

#: Sub-folders of ``data_path`` for each source (see docs/data.md).
SOURCE_DIRS: dict[str, str] = {
    "slake": "slake",
    "vqa-rad": "vqa-rad",
    "vqa-med-2019": "vqa-med-2019",
    "vqa-med-2020": "vqa-med-2020",
    "vqa-med-2021": "vqa-med-2021",
    "medvqa-fl": "medvqa-fl",
    "open-i": "open-i",
    "mimic-cxr": "mimic-cxr-jpg",
}

TASK1_CLIENTS: tuple[str, ...] = ("slake", "vqa-rad", "vqa-med-2019", "vqa-med-2020", "vqa-med-2021")
#: Task 2: (client, source, SLAKE modality or MedVQA-FL client).
TASK2_CLIENTS: tuple[tuple[str, str, str], ...] = (
    ("ct", "slake", "CT"),
    ("mri", "slake", "MRI"),
    ("x-ray", "slake", "X-Ray"),
    ("ultrasound", "medvqa-fl", "breast-ultrasound"),
    ("dermoscopy", "medvqa-fl", "dermoscopy"),
    ("fundus", "medvqa-fl", "fundus"),
    ("histology", "medvqa-fl", "colon-pathology"),
    ("oct", "medvqa-fl", "oct"),
)
TASK6_CLIENTS: tuple[str, ...] = ("slake", "vqa-rad", "vqa-med-2019", "open-i", "mimic-cxr")


def source_dir(settings: DataSettings, source: str) -> Path:
    """``data_path/<folder of source>``; an error naming ``data.path`` if it is unset."""
    if not settings.data_path:
        raise ConfigError(
            f"data.path: task {settings.task!r} reads files ({source}); set data.path in the run config "
            "(simulation) or data-path in the SuperNode's node config (deployment). See docs/data.md."
        )
    return Path(settings.data_path) / SOURCE_DIRS[source]


def _vqa_rows(settings: DataSettings, source: str) -> tuple[dict, ...]:
    folder = str(source_dir(settings, source))
    if source == "slake":
        from f3ocus_core.data.slake import read_slake

        return read_slake(folder)
    if source == "vqa-rad":
        from f3ocus_core.data.vqa_rad import read_vqa_rad

        return read_vqa_rad(folder)
    from f3ocus_core.data.vqa_med import read_vqa_med

    return read_vqa_med(folder, int(source.rsplit("-", 1)[1]))


def _vqa_client(settings: DataSettings, name: str, rows: Sequence[dict]) -> ClientData:
    from f3ocus_core.data.records import make_client

    return make_client(
        name, "vqa", rows, None, max_train=settings.max_train, max_test=settings.max_test, seed=settings.seed
    )


def _chest_rows(settings: DataSettings, source: str) -> tuple[dict, ...]:
    from f3ocus_core.data.chest_xray import read_mimic, read_openi

    folder = str(source_dir(settings, source))
    return read_openi(folder) if source == "open-i" else read_mimic(folder)


def _chest_whole(settings: DataSettings, name: str, source: str) -> ClientData:
    from f3ocus_core.data.chest_xray import chest_client

    rows = _chest_rows(settings, source)
    caps = {"max_train": settings.max_train, "max_test": settings.max_test}
    return chest_client(name, rows, **caps, seed=settings.seed)


def _chest_part(settings: DataSettings, task: str, source: str, partition_id: int, num_partitions: int) -> ClientData:
    from f3ocus_core.data.chest_xray import chest_client, partition

    rows = _chest_rows(settings, source)
    part = partition(rows, num_partitions, settings.alpha, settings.seed)[partition_id]
    return chest_client(
        f"{task}/{source}-{partition_id}",
        [rows[i] for i in part],
        max_train=settings.max_train,
        max_test=settings.max_test,
        seed=settings.seed,
    )


def _medvqa(settings: DataSettings, task: str, client: str, name: str) -> ClientData:
    from f3ocus_core.data.medvqa import load_medvqa_client

    root = Path(settings.data_path) if settings.data_path else source_dir(settings, "medvqa-fl")
    return load_medvqa_client(
        root,
        client,
        max_train=settings.max_train,
        max_test=settings.max_test,
        seed=settings.seed,
        name=f"{task}/{name}",
    )


def _easy_vqa(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    return load_client(
        partition_id,
        num_partitions,
        partitioning=settings.partitioning,
        alpha=settings.alpha,
        seed=settings.seed,
        max_train=settings.max_train,
        max_test=settings.max_test,
        families=parse_families(
            values_for(settings.questions, num_partitions, "data.questions")[partition_id], "data.questions"
        ),
    )


def _task1(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    source = TASK1_CLIENTS[partition_id]
    return _vqa_client(settings, f"task1-domain/{source}", _vqa_rows(settings, source))


def _task2(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    name, source, selector = TASK2_CLIENTS[partition_id]
    if source == "medvqa-fl":
        return _medvqa(settings, "task2-modality", selector, name)
    rows = [row for row in _vqa_rows(settings, "slake") if row["modality"] == selector]
    return _vqa_client(settings, f"task2-modality/{name}", rows)


def _task3(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    from f3ocus_core.data.medvqa import CLIENT_NAMES

    return _medvqa(settings, "task3-medvqa-fl", CLIENT_NAMES[partition_id], CLIENT_NAMES[partition_id])


def _task4(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    return _chest_part(settings, "task4-openi", "open-i", partition_id, num_partitions)


def _task5(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    return _chest_part(settings, "task5-mimic-cxr", "mimic-cxr", partition_id, num_partitions)


def _task6(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    source = TASK6_CLIENTS[partition_id]
    if source in ("open-i", "mimic-cxr"):
        return _chest_whole(settings, f"task6-mixed/{source}", source)
    return _vqa_client(settings, f"task6-mixed/{source}", _vqa_rows(settings, source))


_MEDICAL: dict[str, tuple[str, Recipe, int]] = {
    "task1-domain": ("1", _task1, len(TASK1_CLIENTS)),
    "task2-modality": ("2", _task2, len(TASK2_CLIENTS)),
    "task3-medvqa-fl": ("3", _task3, 9),
    "task4-openi": ("4", _task4, 4),
    "task5-mimic-cxr": ("5", _task5, 10),
    "task6-mixed": ("6", _task6, len(TASK6_CLIENTS)),
}

#: Short alias -> task name.
ALIASES: dict[str, str] = {alias: name for name, (alias, _, _) in _MEDICAL.items()}

#: Task name (or alias) -> recipe.
TASKS: dict[str, Recipe] = {
    "easy-vqa": _easy_vqa,
    **{key: recipe for name, (alias, recipe, _) in _MEDICAL.items() for key in (name, alias)},
}

#: Task name (or alias) -> the number of clients the recipe defines (tasks missing here take any number).
FIXED_CLIENTS: dict[str, int] = {
    key: clients for name, (alias, _, clients) in _MEDICAL.items() for key in (name, alias)
}


def check_settings(settings: DataSettings, num_partitions: int) -> None:
    """Raise :class:`ConfigError` naming the key if ``settings.task`` cannot have ``num_partitions``
    clients, or ``data.shift`` / ``data.questions`` list a number of values other than 1 or
    ``num_partitions``.

    The values themselves were checked when ``settings`` was made (:meth:`DataSettings.__post_init__`).
    """
    values_for(settings.shift, num_partitions, "data.shift")
    values_for(settings.questions, num_partitions, "data.questions")
    fixed = FIXED_CLIENTS.get(settings.task)
    if fixed is not None and fixed != num_partitions:
        raise ConfigError(
            f"task: {settings.task!r} defines {fixed} clients, but the federation has "
            f"{num_partitions}; run it with num-supernodes={fixed}."
        )


def load_client_data(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    """The data of client ``partition_id`` out of ``num_partitions`` for ``settings.task``, its
    images through its ``data.shift``."""
    check_settings(settings, num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}.")
    data = TASKS[settings.task](settings, partition_id, num_partitions)
    shift = parse_shift(values_for(settings.shift, num_partitions, "data.shift")[partition_id])
    return shift_client(data, shift, settings.seed, partition_id)
