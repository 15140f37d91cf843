"""Test support: tiny stand-ins for the medical data sets, written in each release's real on-disk format.

The data tests and the end-to-end ``flwr run`` check use them; they live under ``tests/``, outside
the installed package. They contain a few synthetic images per class (random pixels whose brightness
depends on the class, so a model can learn something) but the real file names, folder layouts, keys,
shapes, dtypes and field names. Nothing is downloaded.

:func:`write_task_fixture` lays out everything a task needs under one root, in the layout that
``data.path`` expects (see ``docs/data.md``), building MedVQA-FL where the task uses it.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from f3ocus_core.data.chest_xray import CHEXPERT_LABELS
from f3ocus_core.data.medmnist_classes import MEDMNIST_2D, SPLITS
from f3ocus_core.data.medvqa_build import build_medvqa_fl
from f3ocus_core.data.tasks import ALIASES, SOURCE_DIRS, TASKS

#: The six medical tasks, in alias order ("1" .. "6"); :func:`write_task_fixture` writes each.
MEDICAL_TASKS: tuple[str, ...] = (
    "task1-domain",
    "task2-modality",
    "task3-medvqa-fl",
    "task4-openi",
    "task5-mimic-cxr",
    "task6-mixed",
)


def _pixels(rng: np.random.Generator, shape: tuple[int, ...], level: int, levels: int) -> np.ndarray:
    """Noise around a brightness that encodes ``level`` of ``levels``."""
    centre = 40 + int(175 * level / max(levels - 1, 1))
    return np.clip(rng.normal(centre, 20, size=shape), 0, 255).astype(np.uint8)


def write_medmnist_fixture(
    directory: Path | str,
    per_class: int = 2,
    *,
    flags: Iterable[str] | None = None,
    scale: float | None = None,
    size: int = 28,
    seed: int = 0,
) -> list[Path]:
    """Write MedMNIST ``.npz`` files (keys ``{train,val,test}_{images,labels}``) into ``directory``.

    Parameters
    ----------
    directory : path
        Created if needed.
    per_class : int
        Images per class in each split. ChestMNIST gets one image per finding, plus ``per_class``
        images without finding and ``per_class`` with two findings, per ``per_class``.
    flags : iterable of str, optional
        Which sets to write (default: all twelve 2D sets of MedVQA-FL).
    scale : float, optional
        Instead of ``per_class``, give every split ``round(scale * official size)`` images (at least
        one), labels cycling over the classes: a miniature with the real relative sizes.
    size : int
        Image side; 28 writes ``flag.npz``, other sizes ``flag_{size}.npz`` as MedMNIST+ does.
    seed : int
        Seed of the pixels.

    Returns the written paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for flag in flags or sorted(MEDMNIST_2D):
        spec = MEDMNIST_2D[flag]
        arrays = {}
        for split in SPLITS:
            if scale is not None:
                n = max(1, round(spec.n_samples[split] * scale))
                classes = np.arange(n) % len(spec.labels)
                labels = _multi_hot(classes, len(spec.labels)) if spec.multilabel else classes[:, None]
            elif spec.multilabel:
                labels = _chest_labels(per_class, len(spec.labels))
            else:
                labels = np.repeat(np.arange(len(spec.labels)), per_class)[:, None]
            shape = (size, size) if spec.n_channels == 1 else (size, size, 3)
            levels = labels.argmax(1) if spec.multilabel else labels[:, 0]
            arrays[f"{split}_images"] = np.stack(
                [_pixels(rng, shape, int(level), len(spec.labels)) for level in levels]
            )
            arrays[f"{split}_labels"] = labels.astype(np.uint8)
        path = directory / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
        np.savez_compressed(path, **arrays)
        written.append(path)
    return written


def _multi_hot(classes: np.ndarray, width: int) -> np.ndarray:
    labels = np.zeros((len(classes), width), dtype=np.uint8)
    labels[np.arange(len(classes)), classes] = 1
    return labels


def _chest_labels(per_class: int, width: int) -> np.ndarray:
    single = _multi_hot(np.repeat(np.arange(width), per_class), width)
    none = np.zeros((per_class, width), dtype=np.uint8)
    double = _multi_hot(np.arange(per_class) % width, width)
    double[np.arange(per_class), (np.arange(per_class) + 1) % width] = 1
    return np.concatenate([single, none, double])


def _save_image(path: Path, rng: np.random.Generator, level: int, levels: int, size: int = 32, mode: str = "L") -> None:
    """A small image whose brightness encodes ``level``; the format follows the file suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(_pixels(rng, shape, level, levels)).save(path)


def write_slake_fixture(directory: Path | str, per_modality: int = 5, seed: int = 0) -> Path:
    """A SLAKE release (``Slake1.0/{train,validate,test}.json`` and ``imgs/``) under ``directory``.

    Per modality (CT, MRI, X-Ray): ``per_modality`` images (at least 3), the last in ``test.json``,
    the one before in ``validate.json``, the rest in ``train.json``; three English questions and one
    Chinese question per image. Returns the ``Slake1.0`` folder.
    """
    if per_modality < 3:
        raise ValueError("per_modality must be >= 3 so that every split gets an image.")
    root = Path(directory) / "Slake1.0"
    rng = np.random.default_rng(seed)
    files: dict[str, list[dict]] = {"train": [], "validate": [], "test": []}
    organs = {"CT": "Abdomen", "MRI": "Brain", "X-Ray": "Chest"}
    qid = 0
    for m, modality in enumerate(("CT", "MRI", "X-Ray")):
        for j in range(per_modality):
            img_id = m * per_modality + j + 1
            img_name = f"xmlab{img_id}/source.jpg"
            _save_image(root / "imgs" / img_name, rng, m, 3, mode="RGB")
            split = "test" if j == per_modality - 1 else "validate" if j == per_modality - 2 else "train"
            location = organs[modality]
            qa = [
                ("en", "Which modality is used to take this image?", modality, "CLOSED", "Modality"),
                ("en", "Which part of the body does this image belong to?", location, "OPEN", "Position"),
                ("en", "Is this image abnormal?", "Yes" if j % 2 else "No", "CLOSED", "Abnormality"),
                ("zh", "这张图片是什么模态?", modality, "OPEN", "Modality"),
            ]
            for lang, question, answer, answer_type, content in qa:
                files[split].append(
                    {
                        "img_id": img_id,
                        "img_name": img_name,
                        "question": question,
                        "answer": answer,
                        "q_lang": lang,
                        "location": location,
                        "modality": modality,
                        "answer_type": answer_type,
                        "base_type": "vqa",
                        "content_type": content,
                        "triple": ["vhead", "_", "_"],
                        "qid": qid,
                    }
                )
                qid += 1
    for split, entries in files.items():
        text = json.dumps(entries, ensure_ascii=False, indent=1)
        (root / f"{split}.json").write_text(text, encoding="utf-8")
    return root


def write_vqa_rad_fixture(directory: Path | str, images: int = 8, seed: int = 0) -> Path:
    """A VQA-RAD release (``VQA_RAD Dataset Public.json``, ``VQA_RAD Image Folder/``) in ``directory``.

    Three questions per image; every fourth image's questions are test (``test_freeform`` /
    ``test_para``). Some answers are JSON numbers, as in the release. Returns ``directory``.
    """
    root = Path(directory)
    rng = np.random.default_rng(seed)
    organs = ("HEAD", "CHEST", "ABD")
    modality = {"HEAD": "MRI", "CHEST": "X-ray", "ABD": "CT"}
    entries = []
    for i in range(images):
        name = f"synpic{50000 + i}.jpg"
        organ = organs[i % 3]
        _save_image(root / "VQA_RAD Image Folder" / name, rng, i % 3, 3)
        test = i % 4 == 3
        qa = [
            ("Is there evidence of a pneumothorax?", "Yes" if i % 2 else "No", "CLOSED", "PRES"),
            ("What imaging modality was used?", modality[organ], "OPEN", "MODALITY"),
            ("How many lesions are seen?", i % 3 + 1, "OPEN", "COUNT"),
        ]
        for k, (question, answer, answer_type, question_type) in enumerate(qa):
            phrase = "freeform" if k % 2 == 0 else "para"
            entries.append(
                {
                    "qid": len(entries) + 1,
                    "image_name": name,
                    "image_case_url": f"https://medpix.nlm.nih.gov/case?id={i}",
                    "image_organ": organ,
                    "answer": answer,
                    "answer_type": answer_type,
                    "question_type": question_type,
                    "question": question,
                    "phrase_type": f"test_{phrase}" if test else phrase,
                    "question_rephrase": "NULL",
                    "question_relation": "NULL",
                    "question_frame": "NULL",
                    "qid_linked_id": f"{i}_{k}",
                    "evaluation": "not evaluated",
                }
            )
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return root


_VQA_MED_2019_CATEGORIES = (
    ("C1_Modality", "modality", "what modality is shown?", ("ct", "mr", "us - ultrasound")),
    ("C2_Plane", "plane", "in what plane is this image oriented?", ("axial", "sagittal", "coronal")),
    ("C3_Organ", "organ", "what organ system is pictured?", ("skull and contents", "lung, mediastinum")),
    ("C4_Abnormality", "abnormality", "what is abnormal in the ct scan?", ("meningioma", "pneumonia")),
)
_ABNORMALITIES = ("meningioma", "pulmonary embolism", "osteosarcoma", "hemangioma")


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_vqa_med_fixture(directory: Path | str, year: int, images: int = 4, seed: int = 0) -> Path:
    """One VQA-Med release (2019, 2020 or 2021) in its released folder and file names.

    ``images`` images per split. 2019: four category files plus ``All_QA_Pairs_*.txt`` per split and a
    test file with categories and reference answers; 2020: train/val QA files and a test set with
    separate question and reference-answer files; 2021: the 2020 training folders (as the release
    expects) plus the 2021 validation file and a test set whose references list several accepted
    answers. Returns ``directory``.
    """
    root = Path(directory)
    rng = np.random.default_rng(seed + year)

    def image(folder: Path, split: str, i: int) -> str:
        image_id = f"synpic{year % 100}{ {'train': 1, 'val': 2, 'test': 3}[split] }{i:03d}"
        _save_image(folder / f"{image_id}.jpg", rng, i % 4, 4)
        return image_id

    if year == 2019:
        folders = {
            "train": (root / "ImageClef-2019-VQA-Med-Training", "Train_images", "train"),
            "val": (root / "ImageClef-2019-VQA-Med-Validation", "Val_images", "val"),
        }
        for split, (folder, image_folder, suffix) in folders.items():
            ids = [image(folder / image_folder, split, i) for i in range(images)]
            everything = []
            for prefix, _, question, answers in _VQA_MED_2019_CATEGORIES:
                lines = [f"{id_}|{question}|{answers[i % len(answers)]}" for i, id_ in enumerate(ids)]
                _write_lines(folder / "QAPairsByCategory" / f"{prefix}_{suffix}.txt", lines)
                everything += lines
            _write_lines(folder / f"All_QA_Pairs_{suffix}.txt", everything)
            _write_lines(folder / f"{suffix}_ImageIDs.txt", ids)
        test = root / "VQAMed2019Test"
        ids = [image(test / "VQAMed2019_Test_Images", "test", i) for i in range(images)]
        with_answers, questions = [], []
        for i, image_id in enumerate(ids):
            _, category, question, answers = _VQA_MED_2019_CATEGORIES[i % 4]
            with_answers.append(f"{image_id}|{category}|{question}|{answers[i % len(answers)]}")
            questions.append(f"{image_id}|{question}")
        _write_lines(test / "VQAMed2019_Test_Questions_w_Ref_Answers.txt", with_answers)
        _write_lines(test / "VQAMed2019_Test_Questions.txt", questions)
        return root
    if year not in (2020, 2021):
        raise ValueError(f"VQA-Med year must be 2019, 2020 or 2021, got {year}.")
    trainval = root / "VQA-Med-2020-Task1-VQAnswering-TrainVal-Sets"
    for split, folder, file in (
        ("train", "VQAMed2020-VQAnswering-TrainingSet", "VQAnswering_2020_Train_QA_pairs.txt"),
        ("val", "VQAMed2020-VQAnswering-ValidationSet", "VQAnswering_2020_Val_QA_Pairs.txt"),
    ):
        image_folder = f"VQAnswering_2020_{split.title()}_images"
        ids = [image(trainval / folder / image_folder, split, i) for i in range(images)]
        lines = [
            f"{image_id}|what is the primary abnormality in this image?|{_ABNORMALITIES[i % 4]}"
            if i % 3
            else f"{image_id}|is this image abnormal?|{'yes' if i % 2 else 'no'}"
            for i, image_id in enumerate(ids)
        ]
        _write_lines(trainval / folder / file, lines)
    if year == 2020:
        test = root / "VQA-TestSet-ReferenceAnswers-VQAMed2020-Task1"
        ids = [image(test / "Task1-2020-VQAnswering-Test-Images", "test", i) for i in range(images)]
        questions = (f"{image_id}|what is abnormal in the mri?" for image_id in ids)
        _write_lines(test / "VQAMed2020-Task1-VQAnswering-Test-Questions.txt", questions)
        _write_lines(
            test / "VQAMed2020-Task1-VQAnswering-Test-ReferenceAnswers.txt",
            (f"{image_id}|{_ABNORMALITIES[i % 4]}" for i, image_id in enumerate(ids)),
        )
        return root
    validation = root / "VQA-Med-2021-VQAnswering-Task1-New-ValidationSet"
    folder = validation / "ImageCLEF-2021-VQA-Med-New-Validation-Images"
    ids = [image(folder, "val", 100 + i) for i in range(images)]
    _write_lines(
        validation / "VQA-Med-2021-VQAnswering-Task1-New-ValidationSet.txt",
        (f"{id_}|what is most alarming about this ct?|{_ABNORMALITIES[i % 4]}" for i, id_ in enumerate(ids)),
    )
    test = root / "Task1-VQA-2021-TestSet-w-GroundTruth"
    ids = [image(test / "VQA-500-Images", "test", i) for i in range(images)]
    questions = (f"{image_id}|what abnormality is seen in the image?" for image_id in ids)
    _write_lines(test / "Task1-VQA-2021-TestSet-Questions.txt", questions)
    _write_lines(
        test / "Task1-VQA-2021-TestSet-ReferenceAnswers.txt",
        (f"{id_}|{_ABNORMALITIES[i % 4]}|{_ABNORMALITIES[i % 4]} (alternative)" for i, id_ in enumerate(ids)),
    )
    return root


#: MeSH strings in Open-I's style, cycled over the fixture's reports.
OPENI_MESH_EXAMPLES: tuple[str, ...] = (
    "normal",
    "Cardiomegaly/borderline;Pulmonary Artery/enlarged",
    "Pleural Effusion/right/small;Pulmonary Atelectasis/base/left",
    "Opacity/lung/base/left/patchy;Pneumonia",
    "Calcified Granuloma/lung/upper lobe/right",
    "normal",
    "Pulmonary Emphysema;Lung/hyperdistention",
    "Fractures, Bone/ribs/left",
    "Catheters, Indwelling;Pulmonary Edema",
    "No Indexing",
    "Spine/degenerative/mild",
    "Pneumothorax/apex/left",
    "Consolidation/lung/lower lobe/right",
    "Cardiac Shadow/enlarged;Mediastinum/widened",
    "Nodule/lung/middle lobe/right",
    "Thickening/pleura/apex/bilateral",
)


def write_openi_fixture(directory: Path | str, reports: int = 64, seed: int = 0) -> Path:
    """An Open-I (Indiana University) release in the Kaggle layout, in ``directory``.

    ``indiana_reports.csv`` (uid, MeSH, Problems, image, indication, comparison, findings,
    impression), ``indiana_projections.csv`` (uid, filename, projection) and a frontal and a lateral
    PNG per report under ``images/images_normalized/``. MeSH strings cycle over
    :data:`OPENI_MESH_EXAMPLES`. Returns ``directory``.
    """
    root = Path(directory)
    rng = np.random.default_rng(seed)
    images = root / "images" / "images_normalized"
    report_rows, projection_rows = [], []
    for uid in range(1, reports + 1):
        mesh = OPENI_MESH_EXAMPLES[(uid - 1) % len(OPENI_MESH_EXAMPLES)]
        problems = ";".join(term.split("/")[0] for term in mesh.split(";"))
        text = ["Xray Chest PA and Lateral", "Cough.", "None.", "Clear.", "Normal."]
        report_rows.append([uid, mesh, problems, *text])
        for k, projection in ((1001, "Frontal"), (2001, "Lateral")):
            filename = f"{uid}_IM-{uid:04d}-{k}.dcm.png"
            level = (uid - 1) % len(OPENI_MESH_EXAMPLES)
            _save_image(images / filename, rng, level, len(OPENI_MESH_EXAMPLES))
            projection_rows.append([uid, filename, projection])
    header = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    _write_csv(root / "indiana_reports.csv", header, report_rows)
    _write_csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], projection_rows)
    return root


def write_mimic_fixture(directory: Path | str, studies: int = 200, seed: int = 0) -> Path:
    """A MIMIC-CXR-JPG release in ``directory``: label and metadata tables and the JPEG tree.

    ``mimic-cxr-2.0.0-chexpert.csv.gz`` (subject_id, study_id and the 14 CheXpert columns with 1.0,
    0.0, -1.0 or blank), ``mimic-cxr-2.0.0-metadata.csv.gz`` (dicom_id, subject_id, study_id,
    ViewPosition, ...) and ``files/p1x/p<subject>/s<study>/<dicom_id>.jpg``: per study one frontal
    (PA or AP) and one lateral image. Returns ``directory``.
    """
    root = Path(directory)
    rng = np.random.default_rng(seed)
    label_rows, meta_rows = [], []
    values = ("1.0", "0.0", "-1.0", "")
    for s in range(studies):
        subject, study = 10000032 + s // 2, 50000000 + s
        finding = s % len(CHEXPERT_LABELS)
        row = [subject, study]
        for k, _ in enumerate(CHEXPERT_LABELS):
            row.append("1.0" if k == finding else values[1 + (s + k) % 3] if k != 0 else "")
        label_rows.append(row)
        for view in ("PA" if s % 3 else "AP", "LATERAL"):
            dicom = f"{s:08x}-{view.lower()}-{subject}"
            path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            _save_image(path, rng, finding, len(CHEXPERT_LABELS))
            orientation = {"PA": "postero-anterior", "AP": "antero-posterior"}.get(view, "lateral")
            procedure = "CHEST (PA AND LAT)"
            when = [21800506, 213014.5]
            row = [dicom, subject, study, procedure, view, 32, 32, *when, procedure, orientation, "Erect"]
            meta_rows.append(row)
    for name, header, rows in (
        ("mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *sorted(CHEXPERT_LABELS)], None),
        (
            "mimic-cxr-2.0.0-metadata.csv.gz",
            [
                "dicom_id",
                "subject_id",
                "study_id",
                "PerformedProcedureStepDescription",
                "ViewPosition",
                "Rows",
                "Columns",
                "StudyDate",
                "StudyTime",
                "ProcedureCodeSequence_CodeMeaning",
                "ViewCodeSequence_CodeMeaning",
                "PatientOrientationCodeSequence_CodeMeaning",
            ],
            meta_rows,
        ),
    ):
        if rows is None:
            order = [CHEXPERT_LABELS.index(label) for label in sorted(CHEXPERT_LABELS)]
            rows = [[r[0], r[1], *[r[2 + k] for k in order]] for r in label_rows]
        with gzip.open(root / name, "wt", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return root


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_task_fixture(root: Path | str, task: str, *, per_class: int = 2, seed: int = 0) -> Path:
    """Everything ``task`` (a name or alias of :data:`f3ocus_core.data.tasks.TASKS`) reads, under ``root``.

    Run the task with ``data.path = root``. MedVQA-FL is built from a MedMNIST fixture
    (``root/medmnist-npz``) into ``root/medvqa-fl``. Returns ``root``.
    """
    task = ALIASES.get(task, task)
    sources = {
        "easy-vqa": (),
        "task1-domain": ("slake", "vqa-rad", "vqa-med-2019", "vqa-med-2020", "vqa-med-2021"),
        "task2-modality": ("slake", "medvqa-fl"),
        "task3-medvqa-fl": ("medvqa-fl",),
        "task4-openi": ("open-i",),
        "task5-mimic-cxr": ("mimic-cxr",),
        "task6-mixed": ("slake", "vqa-rad", "vqa-med-2019", "open-i", "mimic-cxr"),
    }
    if task not in sources or task not in TASKS:
        raise ValueError(f"task: no fixture for {task!r}; choose one of {sorted(sources)}.")
    root = Path(root)
    for source in sources[task]:
        folder = root / SOURCE_DIRS[source]
        if folder.exists():
            continue
        if source == "slake":
            write_slake_fixture(folder, seed=seed)
        elif source == "vqa-rad":
            write_vqa_rad_fixture(folder, seed=seed)
        elif source.startswith("vqa-med-"):
            write_vqa_med_fixture(folder, int(source[-4:]), seed=seed)
        elif source == "open-i":
            write_openi_fixture(folder, seed=seed)
        elif source == "mimic-cxr":
            write_mimic_fixture(folder, seed=seed)
        else:
            write_medmnist_fixture(root / "medmnist-npz", per_class, seed=seed)
            build_medvqa_fl(root / "medmnist-npz", folder, seed=seed)
    return root
