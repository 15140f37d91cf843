"""MedVQA-FL at run time: the nine modality clients and the loader of a build.

MedVQA-FL is the nine-client medical VQA benchmark of F3OCUS (Saha et al., CVPR 2025, arXiv
2411.11912): one client per imaging modality, built from the MedMNIST v2 2D sets, one question per
image, 80/20 train/test per client. :data:`CLIENTS` defines the clients; :mod:`medvqa_build`
(``f3ocus-build-medvqa``) writes a build from the MedMNIST ``.npz`` files once, offline, and
:func:`load_medvqa_client` reads one client of that build in a run. A build folder holds the manifest
:data:`MANIFEST` (counts, question-type shares, each client's answer vocabulary) and, per client,
``train`` and ``test`` :class:`datasets.Dataset` folders (``datasets.save_to_disk`` format).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from f3ocus_core.data import ClientData
from f3ocus_core.data.records import cap_dataset

#: Name of the manifest file at the root of a build.
MANIFEST = "medvqa_fl.json"
#: Value of the manifest's ``format`` key; a loader refuses other formats.
FORMAT = "f3ocus-medvqa-fl/1"


@dataclass(frozen=True)
class MedVQAClient:
    """One MedVQA-FL client.

    Parameters
    ----------
    name : str
        Folder name in the build and client name in a run.
    modality : str
        Readable description of its images.
    sources : tuple[str, ...]
        MedMNIST flags whose files (all splits) make up the client.
    paper_size : int
        Client size the paper reports (the images of its MedMNIST sets, except abdominal CT: see
        :mod:`medvqa_build`).
    type_weights : dict[str, float]
        Share of its images asked each question type; only types that every source supports.
    """

    name: str
    modality: str
    sources: tuple[str, ...]
    paper_size: int
    type_weights: dict[str, float] = field(default_factory=dict)


#: The nine clients, in partition-id order.
CLIENTS: tuple[MedVQAClient, ...] = (
    MedVQAClient(
        "chest-xray",
        "chest X-ray",
        ("chestmnist", "pneumoniamnist"),
        117_976,
        {"modality": 0.04, "anatomy": 0.05, "diagnosis": 0.87, "other": 0.04},
    ),
    MedVQAClient(
        "oct",
        "retinal optical coherence tomography",
        ("octmnist",),
        109_309,
        {"modality": 0.04, "anatomy": 0.04, "diagnosis": 0.87, "other": 0.05},
    ),
    MedVQAClient(
        "colon-pathology",
        "colorectal histopathology (H&E)",
        ("pathmnist",),
        107_180,
        {"modality": 0.05, "anatomy": 0.05, "diagnosis": 0.65, "tissue": 0.20, "other": 0.05},
    ),
    MedVQAClient(
        "dermoscopy",
        "dermoscopy of skin lesions",
        ("dermamnist",),
        10_015,
        {"modality": 0.10, "anatomy": 0.10, "diagnosis": 0.70, "other": 0.10},
    ),
    MedVQAClient(
        "fundus",
        "retinal fundus photography",
        ("retinamnist",),
        1_600,
        {"modality": 0.05, "anatomy": 0.05, "diagnosis": 0.05, "grading": 0.80, "other": 0.05},
    ),
    MedVQAClient(
        "breast-ultrasound",
        "breast ultrasound",
        ("breastmnist",),
        780,
        {"modality": 0.10, "anatomy": 0.10, "diagnosis": 0.70, "other": 0.10},
    ),
    MedVQAClient(
        "blood-cells",
        "blood cell microscopy",
        ("bloodmnist",),
        17_092,
        {"modality": 0.10, "anatomy": 0.10, "tissue": 0.70, "other": 0.10},
    ),
    MedVQAClient(
        "kidney-cortex",
        "kidney cortex cell microscopy",
        ("tissuemnist",),
        236_386,
        {"modality": 0.19, "anatomy": 0.16, "tissue": 0.46, "other": 0.19},
    ),
    MedVQAClient(
        "abdominal-ct",
        "abdominal CT, axial/coronal/sagittal",
        ("organamnist", "organcmnist", "organsmnist"),
        107_624,
        {"modality": 0.08, "anatomy": 0.80, "other": 0.12},
    ),
)

CLIENT_NAMES: tuple[str, ...] = tuple(client.name for client in CLIENTS)


def find_build(path: Path | str) -> Path:
    """The build folder at ``path`` or at ``path/medvqa-fl``; a clear error if there is none."""
    path = Path(path)
    for candidate in (path, path / "medvqa-fl"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise FileNotFoundError(
        f"No MedVQA-FL build at {path} (looked for {path / MANIFEST} and {path / 'medvqa-fl' / MANIFEST}); "
        f"build it with: f3ocus-build-medvqa --medmnist-dir MEDMNIST_DIR --out {path / 'medvqa-fl'}"
    )


def read_manifest(build: Path | str) -> dict:
    """The manifest of a build folder, checked for the expected format."""
    path = Path(build) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable MedVQA-FL manifest ({error}); rebuild the folder.") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest; rebuild with f3ocus-build-medvqa.")
    return manifest


def load_medvqa_client(
    path: Path | str,
    client: str,
    *,
    max_train: int = 0,
    max_test: int = 0,
    seed: int = 0,
    name: str | None = None,
) -> ClientData:
    """Client ``client`` (a name of :data:`CLIENT_NAMES`) of the build at ``path`` or ``path/medvqa-fl``.

    ``labels`` is the client's answer vocabulary saved by the build (sorted answers of its train and
    test parts), so it does not depend on the caps ``max_train``/``max_test`` (seeded subsamples).
    ``name`` (default ``medvqa-fl/<client>``) names the :class:`ClientData` and fills the ``client``
    column, as for every other task.
    """
    build = find_build(path)
    manifest = read_manifest(build)
    entries = {entry["name"]: entry for entry in manifest["clients"]}
    if client not in entries:
        raise FileNotFoundError(
            f"{build / MANIFEST}: client {client!r} was not built (built: {sorted(entries)}); "
            "rebuild with all its MedMNIST files present."
        )
    name = name or f"medvqa-fl/{client}"
    parts = {}
    for offset, (part, limit) in enumerate((("train", max_train), ("test", max_test))):
        folder = build / client / part
        try:
            dataset = datasets.load_from_disk(str(folder))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{folder}: missing part of the MedVQA-FL build; rebuild it.") from error
        dataset = cap_dataset(dataset, limit, seed + offset)
        parts[part] = dataset.remove_columns("client").add_column("client", [name] * len(dataset))
    labels = list(entries[client]["answers"])
    return ClientData(name=name, kind="vqa", labels=labels, train=parts["train"], test=parts["test"])
