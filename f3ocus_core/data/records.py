"""From rows read out of a data set's files to a client's :class:`~f3ocus_core.data.ClientData`.

Every medical reader (SLAKE, VQA-RAD, VQA-Med, Open-I, MIMIC-CXR) yields plain dict rows with an image
*path* and the columns of :data:`FEATURES`; the MedVQA-FL builder writes the same columns with PNG
bytes. Keeping one schema means every task's clients look alike to the training code, and the
helpers here (seeded caps and splits, image checks, dataset construction) are shared by all recipes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from f3ocus_core.data import ClientData, TaskKind

#: The columns of every medical client's train and test datasets.
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "answer_type": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "client": datasets.Value("string"),
        "source": datasets.Value("string"),
        "source_split": datasets.Value("string"),
        "split": datasets.Value("string"),
    }
)

#: Share of a client's examples that go to its test part when the source has no official split.
TEST_SHARE = 0.2


def normalise_answer(answer: object) -> str:
    """Answers are compared as lower-case stripped strings (VQA-RAD stores some as numbers)."""
    return " ".join(str(answer).strip().lower().split())


def answer_type_of(answer: str) -> str:
    """``"closed"`` for yes/no answers, ``"open"`` otherwise (the usual medical-VQA convention)."""
    return "closed" if answer in ("yes", "no") else "open"


def holdout_mask(n: int, seed: int | np.random.SeedSequence, share: float = TEST_SHARE) -> np.ndarray:
    """A seeded boolean mask putting ``round(share * n)`` of ``n`` items (at least one) in the test part.

    Needs ``n >= 2`` so that both parts are non-empty.
    """
    if n < 2:
        raise ValueError(f"{n} example(s) cannot be split into non-empty train and test parts.")
    n_test = min(n - 1, max(1, round(share * n)))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return mask


def cap_indices(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subsample of at most ``limit`` of ``n`` items (0 keeps all)."""
    if limit <= 0 or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def cap_dataset(dataset: datasets.Dataset, limit: int, seed: int) -> datasets.Dataset:
    """A seeded subsample of at most ``limit`` rows of ``dataset`` (``limit`` 0 keeps all)."""
    if limit <= 0 or len(dataset) <= limit:
        return dataset
    return dataset.select(cap_indices(len(dataset), limit, seed))


def vocabulary(rows: Iterable[dict]) -> list[str]:
    """The sorted set of answers of ``rows``: a reproducible closed-set answer vocabulary."""
    return sorted({answer for row in rows for answer in row["answers"]})


def check_images(paths: Iterable[str], source: str) -> None:
    """Raise naming the file if an image is missing or is not an image PIL can open.

    Only the header is read (cheap enough for tens of thousands of files); a full decode of every
    pixel is left to the training loop.
    """
    for path in dict.fromkeys(paths):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{source}: image file {path} is missing; check the data set's folder.")
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - the header is parsed on open; size proves it is readable
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{source}: image file {path} does not decode as an image ({error}).") from error


def rows_to_dataset(rows: Sequence[dict]) -> datasets.Dataset:
    """A dataset with :data:`FEATURES` from rows whose ``image`` is a file path (decoded lazily)."""
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def make_client(
    name: str,
    kind: TaskKind,
    rows: Sequence[dict],
    labels: Sequence[str] | None,
    *,
    max_train: int,
    max_test: int,
    seed: int,
) -> ClientData:
    """One client from rows whose ``split`` is ``"train"`` or ``"test"``.

    The label set is ``labels`` when given (multi-label tasks), else the sorted answers of *all*
    rows, computed before the caps, so a client's head does not change with ``max_train``. The
    caps are seeded subsamples; only the kept rows' images are checked. Rows' ``client`` is set
    to ``name``.
    """
    vocab = list(labels) if labels is not None else vocabulary(rows)
    parts = {}
    for offset, (split, limit) in enumerate((("train", max_train), ("test", max_test))):
        part = [row for row in rows if row["split"] == split]
        if not part:
            raise ValueError(f"Client {name!r} has no {split} examples; check its source files.")
        part = [dict(part[i], client=name) for i in cap_indices(len(part), limit, seed + offset)]
        check_images((row["image"] for row in part), name)
        parts[split] = rows_to_dataset(part)
    return ClientData(name=name, kind=kind, labels=vocab, train=parts["train"], test=parts["test"])
