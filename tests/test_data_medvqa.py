"""MedVQA-FL: the MedMNIST table and reader, the builder's counts, splits, shares and answers, the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest

from f3ocus_core.data.medmnist_classes import MEDMNIST_2D, SPLITS
from f3ocus_core.data.medmnist_npz import inspect_npz, iter_images, read_labels
from f3ocus_core.data.medvqa import CLIENTS, MANIFEST, load_medvqa_client
from f3ocus_core.data.medvqa_build import build_medvqa_fl, expected_shares, main, type_counts
from f3ocus_core.data.question_templates import PAPER_SHARES, TEMPLATES, display_name
from tests.data_fixtures import write_medmnist_fixture

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("medmnist")
    write_medmnist_fixture(directory, per_class=2)
    return directory


@pytest.fixture(scope="module")
def build(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "medvqa-fl"
    build_medvqa_fl(npz_dir, out, seed=3)
    return out


def _manifest(build: Path) -> dict:
    return json.loads((build / MANIFEST).read_text())


def _images(npz_dir: Path, flag: str) -> int:
    with np.load(npz_dir / f"{flag}.npz") as archive:
        return sum(len(archive[f"{split}_images"]) for split in SPLITS)


# --- the class table -------------------------------------------------------------------------------


def test_table_sizes_match_the_papers_clients_except_abdominal_ct():
    for client in CLIENTS:
        official = sum(MEDMNIST_2D[flag].total for flag in client.sources)
        if client.name == "abdominal-ct":
            # OrganA/C/S ship 58,850 + 23,660 + 25,221 images; the paper's table says 107,624.
            assert official == 107_731 != client.paper_size
        else:
            assert official == client.paper_size
    assert sum(c.paper_size for c in CLIENTS) == 707_962


def test_table_label_formats():
    assert MEDMNIST_2D["chestmnist"].multilabel and len(MEDMNIST_2D["chestmnist"].labels) == 14
    assert not MEDMNIST_2D["pathmnist"].multilabel
    assert {spec.n_channels for spec in MEDMNIST_2D.values()} == {1, 3}
    assert len(MEDMNIST_2D) == 12


# --- the .npz reader -------------------------------------------------------------------------------


def test_streamed_images_equal_numpy_load(npz_dir: Path):
    path = npz_dir / "bloodmnist.npz"
    spec = MEDMNIST_2D["bloodmnist"]
    splits = inspect_npz(path, spec)
    with np.load(path) as archive:
        for split in SPLITS:
            streamed = np.stack(list(iter_images(path, split, chunk=3)))
            np.testing.assert_array_equal(streamed, archive[f"{split}_images"])
            assert splits[split].count == len(streamed)
            np.testing.assert_array_equal(read_labels(path, split, spec), archive[f"{split}_labels"][:, 0])


def _rewrite(src: Path, dst: Path, **changes: np.ndarray | None) -> None:
    with np.load(src) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(dst, **arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val_labels": None}, "val_labels is missing"),
        ({"train_images": np.zeros((4, 28, 28), dtype=np.float32)}, "dtype float32"),
        ({"train_images": np.zeros((4, 28, 28, 3), dtype=np.uint8)}, "shape (4, 28, 28, 3)"),
        ({"test_labels": np.full((4, 1), 9, dtype=np.uint8)}, "test_labels has values in [9, 9]"),
        ({"test_labels": np.zeros((5, 1), dtype=np.uint8)}, "test_labels has 5 rows"),
    ],
)
def test_malformed_npz_names_file_and_key(npz_dir: Path, tmp_path: Path, change: dict, message: str):
    bad = tmp_path / "breastmnist.npz"
    _rewrite(npz_dir / "breastmnist.npz", bad, **change)
    with pytest.raises(ValueError, match="breastmnist.npz") as error:
        inspect_npz(bad, MEDMNIST_2D["breastmnist"])
    assert message in str(error.value)


def test_not_a_zip_is_named(tmp_path: Path):
    bad = tmp_path / "octmnist.npz"
    bad.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ValueError, match=r"octmnist\.npz: not a readable \.npz"):
        inspect_npz(bad, MEDMNIST_2D["octmnist"])


# --- the builder -----------------------------------------------------------------------------------


def test_client_sizes_are_all_images_of_all_splits(build: Path, npz_dir: Path):
    manifest = _manifest(build)
    assert [c["name"] for c in manifest["clients"]] == [c.name for c in CLIENTS]
    for entry, client in zip(manifest["clients"], CLIENTS):
        expected = sum(_images(npz_dir, flag) for flag in client.sources)
        assert entry["images"] == expected == entry["train"] + entry["test"]
        assert entry["source_images"] == {flag: _images(npz_dir, flag) for flag in client.sources}
        train = datasets.load_from_disk(str(build / client.name / "train"))
        test = datasets.load_from_disk(str(build / client.name / "test"))
        assert (len(train), len(test)) == (entry["train"], entry["test"])
        assert entry["test"] == round(0.2 * expected)
        assert set(train["split"]) == {"train"} and set(test["split"]) == {"test"}
        assert set(train["client"]) | set(test["client"]) == {client.name}
        assert set(train["source"]) | set(test["source"]) == set(client.sources)
        assert set(train["source_split"]) | set(test["source_split"]) <= set(SPLITS)


def test_question_type_counts_follow_the_client_weights_exactly(build: Path):
    for entry, client in zip(_manifest(build)["clients"], CLIENTS):
        wanted = type_counts(entry["images"], client.type_weights)
        built = {k: v for k, v in entry["question_types"].items() if v}
        assert built == {k: v for k, v in wanted.items() if v}
        train = datasets.load_from_disk(str(build / client.name / "train"))
        assert set(train["question_type"]) <= set(client.type_weights)


def test_type_counts_are_exact_and_proportional():
    counts = type_counts(101, {"a": 0.5, "b": 0.3, "c": 0.2})
    assert sum(counts.values()) == 101
    assert all(abs(counts[k] - 101 * w) < 1 for k, w in {"a": 0.5, "b": 0.3, "c": 0.2}.items())


def test_weights_only_use_types_every_source_supports():
    for client in CLIENTS:
        assert abs(sum(client.type_weights.values()) - 1) < 1e-9
        for flag in client.sources:
            assert set(client.type_weights) <= set(TEMPLATES[flag]), (client.name, flag)


def test_shares_at_paper_sizes_come_close_to_the_papers():
    shares = expected_shares()
    for qtype, paper in PAPER_SHARES.items():
        if qtype == "grading":
            # Only the 1,600 fundus images can carry grading questions: at most 0.23% of 707,962.
            assert 0.0015 < shares[qtype] <= 1_600 / 707_962
        else:
            assert abs(shares[qtype] - paper) < 0.01, qtype


def test_built_shares_on_a_miniature_with_real_relative_sizes(tmp_path: Path, capsys: pytest.CaptureFixture):
    write_medmnist_fixture(tmp_path / "npz", scale=1 / 1000)
    assert main(["--medmnist-dir", str(tmp_path / "npz"), "--out", str(tmp_path / "out")]) == 0
    shares = _manifest(tmp_path / "out")["question_type_shares"]
    for qtype, paper in PAPER_SHARES.items():
        assert abs(shares[qtype] - paper) < (0.01 if qtype == "grading" else 0.015), qtype
    printed = capsys.readouterr().out
    assert "kidney-cortex" in printed and "diagnosis" in printed and "707,962" in printed


def test_answers_come_from_the_class_names(build: Path):
    manifest = {c["name"]: c for c in _manifest(build)["clients"]}
    oct_names = {display_name("octmnist", i) for i in range(4)}
    fixed = {"yes", "no", "retina", "optical coherence tomography"}
    assert oct_names <= set(manifest["oct"]["answers"]) <= oct_names | fixed
    ct = load_medvqa_client(build, "abdominal-ct")
    planes = {"organamnist": "axial", "organcmnist": "coronal", "organsmnist": "sagittal"}
    for row in ct.train.select_columns(["question_type", "answers", "source"]):
        answer = row["answers"][0]
        if row["question_type"] == "anatomy":
            assert answer in {display_name("organamnist", i) for i in range(11)}
        elif row["question_type"] == "modality":
            assert answer == "ct"
        elif answer not in ("yes", "no"):
            assert answer == planes[row["source"]]
    fundus = load_medvqa_client(build, "fundus")
    grades = [r["answers"][0] for r in fundus.train if r["question_type"] == "grading"]
    assert grades and set(grades) <= {"0", "1", "2", "3", "4"}


def test_answer_vocabulary_is_sorted_answers_of_train_and_test(build: Path):
    client = load_medvqa_client(build, "blood-cells", max_train=5, max_test=2)
    full = load_medvqa_client(build, "blood-cells")
    everything = {a for part in (full.train, full.test) for answers in part["answers"] for a in answers}
    assert client.labels == sorted(everything) == full.labels
    assert (len(client.train), len(client.test)) == (5, 2)


def test_images_decode_to_the_source_pixels(build: Path, npz_dir: Path):
    data = load_medvqa_client(build, "dermoscopy")
    rows = data.train.select(range(3))
    with np.load(npz_dir / "dermamnist.npz") as archive:
        pool = np.concatenate([archive[f"{split}_images"] for split in SPLITS])
    for image in rows["image"]:
        pixels = np.asarray(image)
        assert pixels.shape == (28, 28, 3)
        assert any(np.array_equal(pixels, candidate) for candidate in pool)


def test_build_is_reproducible_and_seeded(npz_dir: Path, build: Path, tmp_path: Path):
    again = build_medvqa_fl(npz_dir, tmp_path / "again", seed=3, allow_missing=False)
    other = build_medvqa_fl(npz_dir, tmp_path / "other", seed=4)
    assert _manifest(tmp_path / "again")["clients"] == _manifest(build)["clients"]
    first = datasets.load_from_disk(str(build / "kidney-cortex" / "train"))
    same = datasets.load_from_disk(str(tmp_path / "again" / "kidney-cortex" / "train"))
    different = datasets.load_from_disk(str(tmp_path / "other" / "kidney-cortex" / "train"))
    assert first["question"] == same["question"] and first["answers"] == same["answers"]
    assert first["question"] != different["question"]
    assert again.clients == _manifest(build)["clients"] and other.out == tmp_path / "other"


# --- bad input and partial builds ----------------------------------------------------------------


def _copy_npz(src: Path, dst: Path, flags) -> Path:
    dst.mkdir()
    for flag in flags:
        (dst / f"{flag}.npz").write_bytes((src / f"{flag}.npz").read_bytes())
    return dst


def test_missing_file_is_named_and_nothing_is_written(npz_dir: Path, tmp_path: Path):
    partial = _copy_npz(npz_dir, tmp_path / "npz", [f for f in MEDMNIST_2D if f != "retinamnist"])
    with pytest.raises(FileNotFoundError, match=r"retinamnist\.npz.*--allow-missing"):
        build_medvqa_fl(partial, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npz"]


def test_allow_missing_builds_the_clients_it_can(npz_dir: Path, tmp_path: Path):
    partial = _copy_npz(npz_dir, tmp_path / "npz", ["retinamnist", "organamnist", "octmnist"])
    report = build_medvqa_fl(partial, tmp_path / "out", allow_missing=True)
    assert [c["name"] for c in report.clients] == ["oct", "fundus", "abdominal-ct"]
    assert report.clients[2]["sources"] == ["organamnist"]
    assert str(partial / "chestmnist.npz") in report.missing
    assert "skipped, files missing" in report.format()
    with pytest.raises(FileNotFoundError, match="'dermoscopy' was not built"):
        load_medvqa_client(tmp_path / "out", "dermoscopy")


def test_failure_while_writing_leaves_nothing_behind(npz_dir: Path, tmp_path: Path):
    source = _copy_npz(npz_dir, tmp_path / "npz", list(MEDMNIST_2D))
    path = source / "tissuemnist.npz"  # a late client: earlier ones are written before it fails
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, arrays.pop("train_images"))
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, value)
            archive.writestr(f"{key}.npy", member.getvalue())
        archive.writestr("train_images.npy", buffer.getvalue()[:-100])
    with pytest.raises(ValueError, match=r"tissuemnist\.npz: key train_images is truncated"):
        build_medvqa_fl(source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npz"]


def test_existing_output_needs_overwrite(npz_dir: Path, tmp_path: Path):
    source = _copy_npz(npz_dir, tmp_path / "npz", ["breastmnist"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_medvqa_fl(source, out, allow_missing=True)
    assert (out / "old.txt").exists()
    build_medvqa_fl(source, out, allow_missing=True, overwrite=True)
    assert not (out / "old.txt").exists() and (out / MANIFEST).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["npz", "out"]


def test_cli_reports_errors_with_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["--medmnist-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 1
    assert "nowhere does not exist" in capsys.readouterr().err


def test_module_entry_point_builds(npz_dir: Path, tmp_path: Path):
    source = _copy_npz(npz_dir, tmp_path / "npz", ["breastmnist"])
    result = subprocess.run(
        [sys.executable, "-m", "f3ocus_core.data.medvqa_build", "--allow-missing"]
        + ["--medmnist-dir", str(source), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "breast-ultrasound" in result.stdout and "question type" in result.stdout
