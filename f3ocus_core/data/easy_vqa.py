"""The embedded default data: the ``easy-vqa`` package's real VQA set (4,000 train and 1,000 test
images of coloured shapes, 13 answers), split among clients.

The split, all seeded:

1. A quarter of the training images form the *base pool*: only the base checkpoint
   (:mod:`f3ocus_core.pretrain`) trains on their questions; no client holds them.
2. The questions of the other training images and of all test images form the *client pool*, which
   is partitioned among the clients, IID or with a Dirichlet skew over answers.
3. Each client splits its part 80/20 into train and test by image, so no image is in both.

Every question belongs to one of four *families* (:func:`question_family`), which
``model.pretrain-exclude`` (left out of the base's pretraining) and ``data.questions`` (which
families a client keeps) name:

============ ======================================================= =========================
family       questions                                               share of the questions
============ ======================================================= =========================
``colour``   "what color is the shape?", "what is the color of ..." 13%
``shape``    "what shape is in the image?", "what is the red shape?" 13%
``yesno``    "is there a red shape?", "does the image contain ..."   37%
``negation`` "is there not a circle?", "is no red shape present?",   37%
             "does the image not contain a ..."
============ ======================================================= =========================
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

import datasets
import easy_vqa
import numpy as np

from f3ocus_core.data import ClientData
from f3ocus_core.data.partition import dirichlet_partition, iid_partition
from f3ocus_core.data.records import cap_dataset
from f3ocus_core.errors import ConfigError

#: Share of the training images that only the base checkpoint sees.
BASE_SHARE = 0.25
#: Share of a client's images that go to its test part.
TEST_SHARE = 0.2
#: The 13 answers, sorted: the label set of every easy-vqa client and of the base checkpoint.
ANSWERS: list[str] = sorted(easy_vqa.get_answers())
#: The question families, see the module docstring.
FAMILIES: tuple[str, ...] = ("colour", "shape", "yesno", "negation")
#: The answers that name a shape; the other answers are ``yes``/``no`` and colours.
SHAPES: frozenset[str] = frozenset({"circle", "rectangle", "triangle"})
_NEGATED = re.compile(r"\bnot\b|^is no\b")


def question_family(question: str, answer: str) -> str:
    """The family of one easy-vqa question (one of :data:`FAMILIES`), from its answer and wording.

    Yes/no questions are ``negation`` when they ask about absence ("is there not a ...", "does the
    image not contain ...", "is no ... present"), else ``yesno``; the others are ``shape`` or
    ``colour`` by their answer.
    """
    if answer in ("yes", "no"):
        return "negation" if _NEGATED.search(question.lower()) else "yesno"
    return "shape" if answer in SHAPES else "colour"


def parse_families(spec: str, key: str) -> frozenset[str]:
    """The families a ``data.questions`` value keeps: ``all``, ``colour+shape`` (these only) or
    ``all-negation`` (all but these); a ``ConfigError`` naming ``key`` if it names no family or an
    unknown one."""
    text = spec.strip().lower()
    if text == "all":
        return frozenset(FAMILIES)
    dropping = text.startswith("all-")
    names = [name.strip() for name in (text[4:].split("-") if dropping else text.split("+"))]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise ConfigError(
            f"{key}: {spec!r}: unknown question family {unknown}; give 'all', families joined "
            f"by '+' (kept) or 'all-' and families joined by '-' (left out), from {list(FAMILIES)}."
        )
    kept = frozenset(FAMILIES) - set(names) if dropping else frozenset(names)
    if not kept:
        raise ConfigError(f"{key}: {spec!r} leaves no question family.")
    return kept


def family_mask(dataset: datasets.Dataset, families: frozenset[str] | set[str]) -> np.ndarray:
    """Which rows of an easy-vqa ``dataset`` ask a question of one of ``families``."""
    return np.array(
        [
            question_family(question, answers[0]) in families
            for question, answers in zip(dataset["question"], dataset["answers"])
        ],
        dtype=bool,
    )


#: The question groups of easy-vqa, named by their answers (:func:`answer_type`).
ANSWER_TYPES: tuple[str, ...] = ("colour", "shape", "yes/no")


def answer_type(answers: list[str]) -> str:
    """The group of an easy-vqa question from its answers: ``colour`` (what colour is the shape?),
    ``shape`` (what shape is in the image?) or ``yes/no`` (is there a red shape?)."""
    answer = answers[0]
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in SHAPES else "colour"


@lru_cache(maxsize=4)
def _pools(seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(base pool, client pool) as datasets with image paths; see the module docstring."""
    train_q, train_a, train_ids = easy_vqa.get_train_questions()
    test_q, test_a, test_ids = easy_vqa.get_test_questions()
    train_paths = easy_vqa.get_train_image_paths()
    test_paths = easy_vqa.get_test_image_paths()
    image_ids = np.array(sorted(train_paths))
    rng = np.random.default_rng(seed)
    base_images = set(rng.permutation(image_ids)[: int(len(image_ids) * BASE_SHARE)].tolist())

    base: dict[str, list] = {"image": [], "question": [], "answers": [], "image_key": []}
    pool: dict[str, list] = {"image": [], "question": [], "answers": [], "image_key": []}
    for question, answer, image_id in zip(train_q, train_a, train_ids):
        target = base if image_id in base_images else pool
        _append(target, train_paths[image_id], question, answer, f"train/{image_id}")
    for question, answer, image_id in zip(test_q, test_a, test_ids):
        _append(pool, test_paths[image_id], question, answer, f"test/{image_id}")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
            "image_key": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(base, features), datasets.Dataset.from_dict(pool, features)


def _append(target: dict[str, list], path: str, question: str, answer: str, key: str) -> None:
    target["image"].append(path)
    target["question"].append(question)
    target["answers"].append([answer])
    target["image_key"].append(key)


def base_pool(seed: int = 0, exclude: tuple[str, ...] = ()) -> datasets.Dataset:
    """The questions of the training images that no client holds (for the base checkpoint), without
    the question families in ``exclude``."""
    pool = _pools(seed)[0]
    if not exclude:
        return pool
    return pool.select(np.flatnonzero(family_mask(pool, set(FAMILIES) - set(exclude))))


def held_out_questions(seed: int = 0, limit: int = 0) -> datasets.Dataset:
    """The questions of the client pool's test side (the union of every client's test part, for any
    partitioning): no base checkpoint and no client trains on them. ``limit`` > 0 keeps a seeded
    random subset of that many, in pool order."""
    pool = _pools(seed)[1]
    rows = np.flatnonzero([_in_test(key, seed) for key in pool["image_key"]])
    if 0 < limit < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return pool.select(rows)


def load_client(
    partition_id: int,
    num_partitions: int,
    *,
    partitioning: str,
    alpha: float,
    seed: int,
    max_train: int,
    max_test: int,
    families: frozenset[str] | None = None,
) -> ClientData:
    """Client ``partition_id``'s part of the client pool, split 80/20 by image.

    The keywords are those of :class:`f3ocus_core.data.tasks.DataSettings` (``partitioning`` is
    ``"iid"`` or ``"dirichlet"`` with concentration ``alpha``; caps of 0 keep every row), passed one by
    one so that this module does not import the task table that imports it. ``families`` (``None``:
    all) keeps only the questions of these families (:func:`question_family`), after the partition
    and before the split and the caps, so that no other client's part changes.
    """
    pool = _pools(seed)[1]
    answers = [answers[0] for answers in pool["answers"]]
    if partitioning == "dirichlet":
        parts = dirichlet_partition(answers, num_partitions, alpha, seed, min_size=10)
    else:
        parts = iid_partition(len(answers), num_partitions, seed)
    part = pool.select(parts[partition_id])
    if families is not None and set(families) != set(FAMILIES):
        part = part.select(np.flatnonzero(family_mask(part, families)))
    is_test = np.array([_in_test(key, seed) for key in part["image_key"]])
    train = cap_dataset(part.select(np.flatnonzero(~is_test)), max_train, seed)
    test = cap_dataset(part.select(np.flatnonzero(is_test)), max_test, seed + 1)
    return ClientData(name=f"easy-vqa/{partition_id}", kind="vqa", labels=list(ANSWERS), train=train, test=test)


def _in_test(image_key: str, seed: int) -> bool:
    """Seeded, stable assignment of an image to the test part (same image, same side, any client)."""
    return (zlib.crc32(f"{seed}:{image_key}".encode()) % 1000) < TEST_SHARE * 1000
