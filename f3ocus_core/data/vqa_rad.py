"""VQA-RAD (Lau et al., Scientific Data 2018): radiology VQA, read from its released files.

Release layout (OSF project 89kps)::

    VQA_RAD Dataset Public.json     list of QA entries
    VQA_RAD Image Folder/           images (entry field ``image_name``, e.g. synpic54610.jpg)

Each entry has ``image_name``, ``question``, ``answer`` (a string or a number), ``answer_type``
("OPEN"/"CLOSED"), ``question_type`` (PRES, ABN, MODALITY, ...) and ``phrase_type``. The usual split
is used: entries whose ``phrase_type`` starts with ``test`` (test_freeform, test_para) are the test
part, all others the train part.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from f3ocus_core.data.records import normalise_answer

JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"
REQUIRED = ("image_name", "question", "answer", "answer_type", "question_type", "phrase_type")


@lru_cache(maxsize=2)
def read_vqa_rad(path: str) -> tuple[dict, ...]:
    """All QA pairs of the release at ``path`` as rows."""
    root = Path(path)
    file = root / JSON_NAME
    if not file.is_file():
        raise FileNotFoundError(f"No VQA-RAD release at {root}: expected {file} and {root / IMAGE_FOLDER}/.")
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: not valid JSON ({error}); download it again.") from error
    if not isinstance(entries, list):
        raise ValueError(f"{file}: expected a JSON list of QA entries, found {type(entries).__name__}.")
    rows = []
    for i, entry in enumerate(entries):
        absent = [key for key in REQUIRED if not isinstance(entry, dict) or key not in entry]
        if absent:
            raise ValueError(f"{file}: entry {i} lacks field(s) {absent}.")
        part = "test" if str(entry["phrase_type"]).lower().startswith("test") else "train"
        rows.append(
            {
                "image": str(root / IMAGE_FOLDER / str(entry["image_name"]).strip()),
                "question": str(entry["question"]).strip(),
                "answers": [normalise_answer(entry["answer"])],
                "answer_type": str(entry["answer_type"]).strip().lower(),
                "question_type": str(entry["question_type"]).strip().lower(),
                "client": "vqa-rad",
                "source": "vqa-rad",
                "source_split": part,
                "split": part,
            }
        )
    return tuple(rows)
