"""Open-I and MIMIC-CXR-JPG readers, the 15-class label set and the Dirichlet label-shift partition."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from f3ocus_core.data.chest_xray import (
    CHEST_LABELS,
    CHEXPERT_LABELS,
    OPENI_TERMS,
    chest_client,
    label_skew,
    openi_labels,
    partition,
    partition_key,
    read_mimic,
    read_openi,
)
from tests.data_fixtures import OPENI_MESH_EXAMPLES, write_mimic_fixture, write_openi_fixture


@pytest.fixture(scope="module")
def openi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_openi_fixture(tmp_path_factory.mktemp("open-i"), reports=48)


@pytest.fixture(scope="module")
def mimic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mimic_fixture(tmp_path_factory.mktemp("mimic"), studies=60)


def test_label_set_is_chexpert_plus_emphysema():
    assert len(CHEST_LABELS) == 15 and CHEST_LABELS[:14] == CHEXPERT_LABELS
    assert CHEST_LABELS[14] == "Emphysema"
    assert {label for _, _, label in OPENI_TERMS} == set(CHEST_LABELS)


@pytest.mark.parametrize(
    ("mesh", "labels"),
    [
        ("normal", ["No Finding"]),
        ("Pleural Effusion/right/small;Pulmonary Atelectasis/base/left", ["Atelectasis", "Pleural Effusion"]),
        ("Cardiac Shadow/enlarged;Mediastinum/widened", ["Enlarged Cardiomediastinum"]),
        ("Cardiac Shadow/normal", []),
        ("Thickening/pleura/apex", ["Pleural Other"]),
        ("Thickening/bronchial", []),
        ("Lung/hypoinflation;Spine/degenerative", []),
        ("Pulmonary Disease, Chronic Obstructive;Catheters, Indwelling", ["Support Devices", "Emphysema"]),
        ("No Indexing", None),
        ("", None),
    ],
)
def test_openi_mesh_keyword_table(mesh: str, labels):
    assert openi_labels(mesh) == labels


def test_openi_reads_frontal_images_of_indexed_reports(openi: Path):
    rows = read_openi(str(openi))
    reports = pd.read_csv(openi / "indiana_reports.csv")
    indexed = reports[reports["MeSH"] != "No Indexing"]
    assert len(rows) == len(indexed)
    assert all(Path(r["image"]).is_file() and r["image"].endswith("1001.dcm.png") for r in rows)
    assert [r["answers"] for r in rows[:3]] == [openi_labels(m) for m in OPENI_MESH_EXAMPLES[:3]]


def test_mimic_labels_positive_only_for_one(mimic: Path):
    rows = read_mimic(str(mimic))
    with gzip.open(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt") as handle:
        labels = pd.read_csv(handle, dtype=str, keep_default_na=False)
    assert len(rows) == len(labels)  # one frontal image per study in the fixture
    for row, (_, study) in zip(rows, labels.iterrows()):
        assert row["answers"] == [name for name in CHEXPERT_LABELS if study[name] == "1.0"]
        assert f"/s{study['study_id']}/" in row["image"] and Path(row["image"]).is_file()
        assert "Emphysema" not in row["answers"]
    assert any(study[name] == "-1.0" for _, study in labels.iterrows() for name in CHEXPERT_LABELS)


def test_mimic_missing_column_is_named(mimic: Path, tmp_path: Path):
    shutil.copytree(mimic, tmp_path / "m", ignore=shutil.ignore_patterns("files"))
    path = tmp_path / "m" / "mimic-cxr-2.0.0-metadata.csv.gz"
    with gzip.open(path, "rt") as handle:
        frame = pd.read_csv(handle)
    frame.drop(columns=["ViewPosition"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"metadata\.csv\.gz: column\(s\) \['ViewPosition'\] missing"):
        read_mimic(str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv"):
        read_mimic(str(tmp_path))


def _synthetic(n: int = 600) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"answers": [CHEST_LABELS[int(k)]] if k < 15 else []} for k in rng.integers(0, 17, n)]


def test_partition_is_seeded_and_covers_every_row_once():
    rows = _synthetic()
    first = partition(rows, 10, alpha=0.5, seed=7)
    again = partition(rows, 10, alpha=0.5, seed=7)
    other = partition(rows, 10, alpha=0.5, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert sorted(np.concatenate(first).tolist()) == list(range(len(rows)))
    assert min(len(part) for part in first) >= 15


def test_label_skew_grows_as_alpha_falls():
    rows = _synthetic()
    skews = {
        alpha: np.mean([label_skew(rows, partition(rows, 4, alpha, seed)) for seed in range(5)])
        for alpha in (100.0, 1.0, 0.1)
    }
    assert skews[100.0] < skews[1.0] < skews[0.1]
    assert skews[100.0] < 0.1 < 0.4 < skews[0.1]


def test_partition_key_is_first_positive_label():
    assert partition_key(["Support Devices", "Edema"]) == "Edema"
    assert partition_key([]) == "none"


def test_chest_client_split_and_fixed_labels(openi: Path):
    rows = read_openi(str(openi))
    client = chest_client("open-i", rows, max_train=0, max_test=0, seed=0)
    assert client.kind == "multilabel" and client.labels == list(CHEST_LABELS)
    assert len(client.train) + len(client.test) == len(rows)
    assert len(client.test) == round(0.2 * len(rows))
    assert set(client.train["split"]) == {"train"} and set(client.test["client"]) == {"open-i"}
    assert any(answers == [] for answers in [*client.train["answers"], *client.test["answers"]])
