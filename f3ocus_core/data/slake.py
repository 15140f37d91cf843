"""SLAKE (Liu et al., ISBI 2021): bilingual radiology VQA, read from its released ``Slake1.0`` folder.

Release layout (``Slake1.0.zip``)::

    Slake1.0/train.json, validate.json, test.json   lists of QA entries
    Slake1.0/imgs/xmlab<N>/source.jpg              images (entry field ``img_name``)

Each entry has ``img_name``, ``question``, ``answer``, ``q_lang`` ("en" or "zh"), ``answer_type``
("OPEN"/"CLOSED"), ``content_type`` (Organ, Position, Abnormality, Modality, ...), ``modality``
("CT", "MRI", "X-Ray") and ``location``. Only English questions are kept. The official split is
used: ``train`` + ``validate`` are the client's train part, ``test`` its test part.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from f3ocus_core.data.records import normalise_answer

#: Release file -> part of the client it feeds.
SPLIT_FILES: dict[str, str] = {"train.json": "train", "validate.json": "train", "test.json": "test"}
REQUIRED = ("img_name", "question", "answer", "q_lang", "answer_type", "content_type", "modality")
#: SLAKE's ``modality`` values.
MODALITIES: tuple[str, ...] = ("CT", "MRI", "X-Ray")


def find_slake(path: Path | str) -> Path:
    """The folder holding ``train.json``: ``path`` itself or ``path/Slake1.0``."""
    path = Path(path)
    for candidate in (path, path / "Slake1.0"):
        if (candidate / "train.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"No SLAKE release at {path}: expected {path / 'Slake1.0' / 'train.json'} (unzip Slake1.0.zip there)."
    )


@lru_cache(maxsize=2)
def read_slake(path: str) -> tuple[dict, ...]:
    """The English QA pairs of all three files, as rows (image paths under ``imgs/``).

    Each row also carries SLAKE's ``modality`` so that task 2 can split it by modality.
    """
    root = find_slake(path)
    rows = []
    for name, part in SPLIT_FILES.items():
        file = root / name
        try:
            entries = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{file} is missing from the SLAKE release.") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{file}: not valid JSON ({error}); unzip the release again.") from error
        if not isinstance(entries, list):
            raise ValueError(f"{file}: expected a JSON list of QA entries, found {type(entries).__name__}.")
        for i, entry in enumerate(entries):
            absent = [key for key in REQUIRED if not isinstance(entry, dict) or key not in entry]
            if absent:
                raise ValueError(f"{file}: entry {i} lacks field(s) {absent}.")
            if entry["q_lang"] != "en":
                continue
            answer = normalise_answer(entry["answer"])
            rows.append(
                {
                    "image": str(root / "imgs" / entry["img_name"]),
                    "question": str(entry["question"]).strip(),
                    "answers": [answer],
                    "answer_type": str(entry["answer_type"]).lower(),
                    "question_type": str(entry["content_type"]).lower(),
                    "client": "slake",
                    "source": "slake",
                    "source_split": file.stem,
                    "split": part,
                    "modality": str(entry["modality"]),
                }
            )
    return tuple(rows)
