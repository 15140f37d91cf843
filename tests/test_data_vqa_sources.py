"""SLAKE, VQA-RAD and VQA-Med readers on fixtures in the releases' formats, and their bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from f3ocus_core.data.slake import find_slake, read_slake
from f3ocus_core.data.vqa_med import read_vqa_med
from f3ocus_core.data.vqa_rad import JSON_NAME, read_vqa_rad
from tests.data_fixtures import write_slake_fixture, write_vqa_med_fixture, write_vqa_rad_fixture


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vqa")
    write_slake_fixture(root / "slake", per_modality=4)
    write_vqa_rad_fixture(root / "vqa-rad", images=8)
    for year in (2019, 2020, 2021):
        write_vqa_med_fixture(root / f"vqa-med-{year}", year, images=3)
    return root


def test_slake_keeps_english_and_uses_the_official_split(sources: Path):
    rows = read_slake(str(sources / "slake"))
    entries = {
        name: json.loads((sources / "slake" / "Slake1.0" / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("train", "validate", "test")
    }
    english = {name: [e for e in items if e["q_lang"] == "en"] for name, items in entries.items()}
    assert len(rows) == sum(len(items) for items in english.values())
    assert sum(r["split"] == "test" for r in rows) == len(english["test"])
    assert {r["source_split"] for r in rows if r["split"] == "train"} == {"train", "validate"}
    assert all(r["question"].isascii() for r in rows)
    assert {r["modality"] for r in rows} == {"CT", "MRI", "X-Ray"}
    assert {r["answers"][0] for r in rows} >= {"ct", "mri", "x-ray", "yes", "no", "brain"}
    assert all(Path(r["image"]).is_file() and "imgs" in Path(r["image"]).parts for r in rows)


def test_slake_folder_may_be_the_release_or_its_parent(sources: Path):
    assert find_slake(sources / "slake") == find_slake(sources / "slake" / "Slake1.0")
    with pytest.raises(FileNotFoundError, match="Slake1.0.zip"):
        find_slake(sources)


def test_vqa_rad_split_by_phrase_type_and_numeric_answers(sources: Path):
    rows = read_vqa_rad(str(sources / "vqa-rad"))
    entries = json.loads((sources / "vqa-rad" / JSON_NAME).read_text())
    assert len(rows) == len(entries)
    tests = sum(e["phrase_type"].startswith("test") for e in entries)
    assert sum(r["split"] == "test" for r in rows) == tests
    numeric = [r for r, e in zip(rows, entries) if isinstance(e["answer"], int)]
    assert numeric and all(r["answers"][0].isdigit() for r in numeric)
    assert {r["answer_type"] for r in rows} == {"open", "closed"}
    assert all(r["image"].endswith(e["image_name"]) for r, e in zip(rows, entries))


def test_vqa_med_2019_deduplicates_category_and_all_pairs_files(sources: Path):
    rows = read_vqa_med(str(sources / "vqa-med-2019"), 2019)
    train = [r for r in rows if r["split"] == "train"]
    # 3 images x 4 categories in train and in val, each pair shipped twice (category file + All_QA_Pairs).
    assert len(train) == 2 * 3 * 4
    assert {r["question_type"] for r in train} == {"modality", "plane", "organ", "abnormality"}
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 3 and all(r["question_type"] for r in test)


def test_vqa_med_2020_joins_questions_with_reference_answers(sources: Path):
    rows = read_vqa_med(str(sources / "vqa-med-2020"), 2020)
    assert sum(r["split"] == "train" for r in rows) == 6
    assert {r["source_split"] for r in rows} == {"train", "val", "test"}
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 3 and all(r["question"] == "what is abnormal in the mri?" for r in test)


def test_vqa_med_2021_keeps_the_first_of_several_reference_answers(sources: Path):
    rows = read_vqa_med(str(sources / "vqa-med-2021"), 2021)
    assert sum(r["split"] == "train" for r in rows) == 9  # 2020 train + val, 2021 validation
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 3 and not any("alternative" in r["answers"][0] for r in test)


def test_vqa_med_bad_line_names_file_and_line(sources: Path, tmp_path: Path):
    root = tmp_path / "vqa-med-2020"
    shutil.copytree(sources / "vqa-med-2020", root)
    qa = next(root.rglob("VQAnswering_2020_Train_QA_pairs.txt"))
    qa.write_text(qa.read_text() + "synpic1|only two fields\n")
    with pytest.raises(ValueError, match=r"VQAnswering_2020_Train_QA_pairs\.txt, line 4: expected"):
        read_vqa_med(str(root), 2020)


def test_vqa_med_missing_image_is_named(sources: Path, tmp_path: Path):
    root = tmp_path / "vqa-med-2019"
    shutil.copytree(sources / "vqa-med-2019", root)
    victim = next(root.rglob("Val_images/*.jpg"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=f"image {victim.stem}.jpg not found"):
        read_vqa_med(str(root), 2019)


def test_slake_malformed_json_and_missing_field(sources: Path, tmp_path: Path):
    root = tmp_path / "slake"
    shutil.copytree(sources / "slake", root)
    test_json = root / "Slake1.0" / "test.json"
    test_json.write_text("[{")
    with pytest.raises(ValueError, match=r"test\.json: not valid JSON"):
        read_slake(str(root))
    test_json.write_text(json.dumps([{"img_name": "x.jpg", "question": "q"}]))
    with pytest.raises(ValueError, match=r"test\.json: entry 0 lacks field\(s\) \['answer'"):
        read_slake(str(tmp_path / "slake" / "Slake1.0"))


def test_vqa_rad_missing_release_names_expected_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="VQA_RAD Dataset Public.json"):
        read_vqa_rad(str(tmp_path))
