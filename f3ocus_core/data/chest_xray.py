"""Multi-label chest X-ray classification from Open-I and MIMIC-CXR-JPG (tasks 4, 5 and 6).

The label set (:data:`CHEST_LABELS`, 15 classes, in head-output order) is the 14 CheXpert labels as
MIMIC-CXR-JPG ships them, plus **Emphysema**, a frequent chest finding that CheXpert lacks. MIMIC's
released label files (``mimic-cxr-2.0.0-chexpert.csv``) have no Emphysema column, so it is never
positive in MIMIC clients; Open-I reports it through MeSH terms.

Labels:

- MIMIC-CXR-JPG: per study, a CheXpert value of 1.0 is positive; 0.0, -1.0 (uncertain) and blank are
  negative ("U-zeros"). Each frontal image (ViewPosition PA or AP) of the study gets the study's labels.
- Open-I: the report's MeSH terms (``indiana_reports.csv``, column ``MeSH``; ``Problems`` if MeSH is
  empty) are mapped with the keyword table :data:`OPENI_TERMS`; a report indexed ``normal`` is
  ``No Finding``; reports marked ``No Indexing`` (or with no terms) are left out. Each frontal image
  (``indiana_projections.csv``, projection ``Frontal``) of the report gets its labels.

An example has ``answers`` = its positive labels (possibly none) and the fixed question
:data:`PROMPT`. Clients of tasks 4 and 5 come from a Dirichlet label-shift partition
(:func:`partition`) keyed by each image's first positive label; each client's part is then split 80/20
into train and test, seeded.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from f3ocus_core.data import ClientData
from f3ocus_core.data.partition import dirichlet_partition
from f3ocus_core.data.records import holdout_mask, make_client

#: The 14 labels of ``mimic-cxr-2.0.0-chexpert.csv``, in CheXpert's usual order.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: The 15 classes of tasks 4-6, in head-output order: CheXpert's 14 plus Emphysema.
CHEST_LABELS: tuple[str, ...] = (*CHEXPERT_LABELS, "Emphysema")

#: The question every classification example carries.
PROMPT = "which findings are present in this chest x-ray?"

#: Open-I MeSH keyword table: (main heading, required qualifier or None, class). A term such as
#: ``Pleural Effusion/right/small`` has main heading ``pleural effusion`` and qualifiers ``right``,
#: ``small``; matching is exact on lower-cased words, so ``Lung/hypoinflation`` maps to nothing.
OPENI_TERMS: tuple[tuple[str, str | None, str], ...] = (
    ("normal", None, "No Finding"),
    ("cardiac shadow", "enlarged", "Enlarged Cardiomediastinum"),
    ("mediastinum", "enlarged", "Enlarged Cardiomediastinum"),
    ("mediastinum", "widened", "Enlarged Cardiomediastinum"),
    ("cardiomegaly", None, "Cardiomegaly"),
    ("heart", "enlarged", "Cardiomegaly"),
    ("opacity", None, "Lung Opacity"),
    ("airspace disease", None, "Lung Opacity"),
    ("infiltrate", None, "Lung Opacity"),
    ("density", None, "Lung Opacity"),
    ("nodule", None, "Lung Lesion"),
    ("mass", None, "Lung Lesion"),
    ("calcified granuloma", None, "Lung Lesion"),
    ("granuloma", None, "Lung Lesion"),
    ("granulomatous disease", None, "Lung Lesion"),
    ("lung neoplasms", None, "Lung Lesion"),
    ("edema", None, "Edema"),
    ("pulmonary edema", None, "Edema"),
    ("consolidation", None, "Consolidation"),
    ("pneumonia", None, "Pneumonia"),
    ("pulmonary atelectasis", None, "Atelectasis"),
    ("atelectasis", None, "Atelectasis"),
    ("pneumothorax", None, "Pneumothorax"),
    ("pleural effusion", None, "Pleural Effusion"),
    ("pleura", None, "Pleural Other"),
    ("thickening", "pleura", "Pleural Other"),
    ("fractures, bone", None, "Fracture"),
    ("fracture", None, "Fracture"),
    ("rib fractures", None, "Fracture"),
    ("catheters, indwelling", None, "Support Devices"),
    ("implanted medical device", None, "Support Devices"),
    ("medical device", None, "Support Devices"),
    ("tube, inserted", None, "Support Devices"),
    ("pacemaker, artificial", None, "Support Devices"),
    ("surgical instruments", None, "Support Devices"),
    ("stents", None, "Support Devices"),
    ("emphysema", None, "Emphysema"),
    ("pulmonary emphysema", None, "Emphysema"),
    ("pulmonary disease, chronic obstructive", None, "Emphysema"),
)

#: Open-I MeSH values that mean "not indexed": such reports have no usable labels.
OPENI_UNLABELLED = ("no indexing", "")

OPENI_REPORTS = "indiana_reports.csv"
OPENI_PROJECTIONS = "indiana_projections.csv"
MIMIC_LABELS = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"


def openi_labels(mesh: str) -> list[str] | None:
    """The classes of an Open-I MeSH string (``;``-separated terms), or None if it is not indexed."""
    terms = [term.strip().lower() for term in str(mesh).split(";")]
    terms = [term for term in terms if term]
    if not terms or terms[0] in OPENI_UNLABELLED:
        return None
    found = set()
    for term in terms:
        heading, *qualifiers = [word.strip() for word in term.split("/")]
        for key, qualifier, label in OPENI_TERMS:
            if heading == key and (qualifier is None or qualifier in qualifiers):
                found.add(label)
    return [label for label in CHEST_LABELS if label in found]


def _row(image: str, answers: list[str], source: str) -> dict:
    return {
        "image": image,
        "question": PROMPT,
        "answers": answers,
        "answer_type": "multilabel",
        "question_type": "findings",
        "client": source,
        "source": source,
        "source_split": "",
        "split": "",
    }


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """A CSV (or ``.csv.gz``) with ``required`` columns; errors name the file and the columns."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            try:
                frame = pd.read_csv(candidate, dtype=str, keep_default_na=False)
            except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
                raise ValueError(f"{candidate}: not a readable CSV file ({error}).") from error
            absent = [column for column in required if column not in frame.columns]
            if absent:
                raise ValueError(f"{candidate}: column(s) {absent} missing; found {list(frame.columns)}.")
            return frame
    raise FileNotFoundError(f"{path} (or {path.name}.gz) not found; see docs/data.md for the layout.")


def openi_image_dir(root: Path) -> Path:
    """Open-I's PNG folder: ``images/images_normalized`` (Kaggle release), or ``images_normalized``."""
    for candidate in (root / "images" / "images_normalized", root / "images_normalized", root / "images"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{root}: no images/images_normalized/ folder with the Open-I PNG files.")


@lru_cache(maxsize=2)
def read_openi(root: str) -> tuple[dict, ...]:
    """One row per frontal Open-I image with usable labels (see the module docstring)."""
    base = Path(root)
    reports = _read_csv(base / OPENI_REPORTS, ("uid", "MeSH"))
    projections = _read_csv(base / OPENI_PROJECTIONS, ("uid", "filename", "projection"))
    images = openi_image_dir(base)
    mesh = {}
    for uid, term, problems in zip(reports["uid"], reports["MeSH"], reports.get("Problems", [""] * len(reports))):
        mesh[uid.strip()] = term if term.strip() else problems
    rows = []
    columns = (projections["uid"], projections["filename"], projections["projection"])
    for uid, filename, projection in zip(*columns):
        if projection.strip().lower() != "frontal":
            continue
        if uid.strip() not in mesh:
            raise ValueError(f"{base / OPENI_PROJECTIONS}: uid {uid} has no report in {OPENI_REPORTS}.")
        labels = openi_labels(mesh[uid.strip()])
        if labels is not None:
            rows.append(_row(str(images / filename.strip()), labels, "open-i"))
    if not rows:
        raise ValueError(f"{base}: no frontal Open-I image with indexed MeSH terms.")
    return tuple(rows)


@lru_cache(maxsize=2)
def read_mimic(root: str) -> tuple[dict, ...]:
    """One row per frontal MIMIC-CXR-JPG image, labelled with its study's CheXpert labels."""
    base = Path(root)
    labels = _read_csv(base / MIMIC_LABELS, ("subject_id", "study_id", *CHEXPERT_LABELS))
    meta = _read_csv(base / MIMIC_METADATA, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    positive = {
        (subject, study): [name for name in CHEXPERT_LABELS if _is_positive(values[name])]
        for subject, study, values in zip(labels["subject_id"], labels["study_id"], labels.to_dict("records"))
    }
    rows = []
    columns = (meta["dicom_id"], meta["subject_id"], meta["study_id"], meta["ViewPosition"])
    for dicom, subject, study, view in zip(*columns):
        if view.strip().upper() not in ("PA", "AP") or (subject, study) not in positive:
            continue
        path = base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        rows.append(_row(str(path), positive[(subject, study)], "mimic-cxr"))
    if not rows:
        raise ValueError(f"{base}: no frontal (PA/AP) image of {MIMIC_METADATA} has a study in {MIMIC_LABELS}.")
    return tuple(rows)


def _is_positive(value: str) -> bool:
    try:
        return float(value) == 1.0
    except ValueError:
        return False


def partition_key(answers: Sequence[str]) -> str:
    """The label a Dirichlet partition sorts an image by: its first positive class, or ``"none"``."""
    return next((label for label in CHEST_LABELS if label in answers), "none")


def partition(rows: Sequence[dict], num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Dirichlet label-shift split of ``rows`` into ``num_clients`` parts (indices into ``rows``).

    Every client gets at least 20 images (fewer only when the data set is too small for that).
    """
    keys = [partition_key(row["answers"]) for row in rows]
    min_size = max(2, min(20, len(rows) // (4 * num_clients)))
    return dirichlet_partition(keys, num_clients, alpha, seed, min_size=min_size)


def label_skew(rows: Sequence[dict], parts: Sequence[np.ndarray]) -> float:
    """Mean total-variation distance between each part's partition-key distribution and the whole's.

    0 means every client sees the same label mix; it grows towards 1 as clients specialise.
    """
    keys = np.array([partition_key(row["answers"]) for row in rows])
    classes = np.unique(keys)
    overall = np.array([(keys == c).mean() for c in classes])
    distances = []
    for part in parts:
        local = np.array([(keys[part] == c).mean() for c in classes])
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


def chest_client(name: str, rows: Sequence[dict], *, max_train: int, max_test: int, seed: int) -> ClientData:
    """A multi-label client from ``rows``: seeded 80/20 train/test split, then the caps."""
    mask = holdout_mask(len(rows), np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
    split_rows = [dict(row, split="test" if test else "train") for row, test in zip(rows, mask)]
    return make_client(name, "multilabel", split_rows, CHEST_LABELS, max_train=max_train, max_test=max_test, seed=seed)
