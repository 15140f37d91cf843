"""ImageCLEF VQA-Med 2019, 2020 and 2021 (Ben Abacha et al.), read from their released folders.

The three releases name their files differently, so a year's folder is read by rule rather than by a
fixed list of names. Every ``.txt`` file under the folder is one of:

- a QA file, one ``image_id|question|answer`` per line (``All_QA_Pairs_train.txt``,
  ``QAPairsByCategory/C1_Modality_train.txt``, ``VQAnswering_2020_Train_QA_pairs.txt``,
  ``VQA-Med-2021-VQAnswering-Task1-New-ValidationSet.txt``), or ``image_id|category|question|answer``
  (``VQAMed2019_Test_Questions_w_Ref_Answers.txt``);
- a question file (``*Questions*.txt``, ``image_id|question``) and, beside it, a reference-answer
  file (``*ReferenceAnswers*.txt``, ``image_id|answer[|other accepted answers...]``; the first answer
  is kept): the 2020 and 2021 test sets. A question file without references beside it is skipped;
- anything else (``*ImageIDs*.txt``, ``README*``) is ignored.

The split of a file comes from its own name, else from its nearest folder whose name says
``train``, ``val`` or ``test``: train + val form the client's train part, test its test part.
Images (``image_id.jpg``) are looked up anywhere under the year's folder. The same (image, question)
seen twice in one split (2019 ships each pair in ``All_QA_Pairs`` and in ``QAPairsByCategory``) is
kept once; the 2019 category (modality, plane, organ, abnormality) becomes the question type.

VQA-Med 2021 reuses the 2020 training set: put the 2020 training (and validation) folders inside the
2021 folder next to the 2021 validation and test folders.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from f3ocus_core.data.records import answer_type_of, normalise_answer

#: Data set years with a release reader.
YEARS: tuple[int, ...] = (2019, 2020, 2021)
_CATEGORY_FILE = re.compile(r"C\d_([A-Za-z]+)_", re.IGNORECASE)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _split_of(file: Path, root: Path) -> str | None:
    """ "train", "val" or "test" from the file's name, else from its nearest telling folder."""
    for part in reversed(file.relative_to(root).parts):
        name = part.lower()
        found = [split for split in ("train", "val", "test") if split in name]
        if len(found) == 1:
            return found[0]
    return None


def _lines(file: Path) -> list[tuple[int, list[str]]]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{file}: not UTF-8 text ({error}).") from error
    lines = enumerate(text.splitlines(), 1)
    return [(n, [field.strip() for field in line.split("|")]) for n, line in lines if line.strip()]


def _kind(file: Path) -> str:
    name = file.name.lower()
    if "referenceanswers" in name:
        return "references"
    if "questions" in name and "ref_answers" not in name:
        return "questions"
    if "imageids" in name or name.startswith("readme"):
        return "ignore"
    return "qa"


@lru_cache(maxsize=6)
def read_vqa_med(path: str, year: int) -> tuple[dict, ...]:
    """All QA pairs with answers under ``path`` (one year's release), as rows."""
    root = Path(path)
    source = f"vqa-med-{year}"
    if not root.is_dir():
        raise FileNotFoundError(f"No VQA-Med {year} release at {root}; see docs/data.md for the layout.")
    images = {p.stem: p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()}
    files = sorted(root.rglob("*.txt"), key=lambda f: (_CATEGORY_FILE.match(f.name) is None, str(f)))
    rows, seen = [], set()
    for file in files:
        kind = _kind(file)
        if kind in ("ignore", "references"):
            continue
        split = _split_of(file, root)
        if split is None:
            raise ValueError(
                f"{file}: cannot tell whether it is train, val or test data; keep the release's folder names."
            )
        category = _CATEGORY_FILE.match(file.name)
        for line, (image_id, question, answer, qtype) in _pairs(file, kind):
            key = (split, image_id, question.lower())
            if key in seen:
                continue
            seen.add(key)
            if image_id not in images:
                raise FileNotFoundError(f"{file}, line {line}: image {image_id}.jpg not found under {root}.")
            answer = normalise_answer(answer)
            rows.append(
                {
                    "image": str(images[image_id]),
                    "question": question,
                    "answers": [answer],
                    "answer_type": answer_type_of(answer),
                    "question_type": (category.group(1) if category else qtype).lower(),
                    "client": source,
                    "source": source,
                    "source_split": split,
                    "split": "test" if split == "test" else "train",
                }
            )
    if not rows:
        raise ValueError(f"{root}: no VQA-Med question-answer file found; see docs/data.md for the layout.")
    return tuple(rows)


def _pairs(file: Path, kind: str) -> list[tuple[int, tuple[str, str, str, str]]]:
    """(line number, (image id, question, answer, category)) of a QA or question file."""
    if kind == "questions":
        references = sorted(p for p in file.parent.glob("*.txt") if _kind(p) == "references")
        if not references:
            return []
        answers = {}
        for _, fields in _lines(references[0]):
            if len(fields) < 2:
                raise ValueError(f"{references[0]}: expected image_id|answer lines, found {'|'.join(fields)!r}.")
            answers[fields[0]] = fields[1:]
        pairs = []
        for line, fields in _lines(file):
            if len(fields) != 2:
                raise ValueError(f"{file}, line {line}: expected image_id|question, found {len(fields)} fields.")
            image_id, question = fields
            if image_id not in answers:
                raise ValueError(f"{references[0]}: no reference answer for image {image_id} of {file.name}.")
            given = answers[image_id]
            answer = given[1] if len(given) > 1 and given[0].lower() == question.lower() else given[0]
            pairs.append((line, (image_id, question, answer, "")))
        return pairs
    pairs = []
    for line, fields in _lines(file):
        if len(fields) == 3:
            image_id, question, answer = fields
            category = ""
        elif len(fields) == 4:
            image_id, category, question, answer = fields
        else:
            raise ValueError(
                f"{file}, line {line}: expected image_id|question|answer "
                f"(or image_id|category|question|answer), found {len(fields)} fields."
            )
        pairs.append((line, (image_id, question, answer, category)))
    return pairs
