"""Federated data: one :class:`ClientData` per client, built from files on disk or a shipped package.

Every task yields the same shape of data, so the client code has one path for all of them:
``train`` and ``test`` are :class:`datasets.Dataset` objects with the columns

- ``image``: a :class:`datasets.Image` feature (decoded to a PIL image on access),
- ``question``: the text the model reads (for classification tasks, a fixed prompt),
- ``answers``: list of strings; one answer for VQA, the positive labels for multi-label tasks,

and any metadata columns the source has (``question_type``, ``client``, ``source``, ``split``).
``labels`` fixes the order of the answer head's outputs and is saved with the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import datasets

TaskKind = Literal["vqa", "multilabel"]


@dataclass
class ClientData:
    """One client's local data.

    Parameters
    ----------
    name : str
        Readable id, e.g. ``"easy-vqa/2"`` or ``"medvqa-fl/oct"``.
    kind : {"vqa", "multilabel"}
        ``"vqa"``: closed-set VQA scored by accuracy; ``"multilabel"``: multi-label classification
        scored by F1.
    labels : list[str]
        The answer vocabulary (VQA) or label set (multi-label), in the order of the head's outputs.
    train, test : datasets.Dataset
        The client's own train and test parts, with the columns described in the module docstring.
    """

    name: str
    kind: TaskKind
    labels: list[str]
    train: datasets.Dataset
    test: datasets.Dataset

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            if len(getattr(self, split)) == 0:
                raise ValueError(f"Client {self.name!r} has no {split} examples.")


def answer_vocabulary(*splits: datasets.Dataset) -> list[str]:
    """The sorted set of answers that occur in ``splits``: a reproducible closed-set vocabulary."""
    return sorted({answer for split in splits for answers in split["answers"] for answer in answers})
