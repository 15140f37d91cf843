"""Does a model read the image? The image-ablation gap.

A vision-language model can score well on VQA from the question alone (the question-only prior). The
test that it looks at the image: answer the same questions twice, once with their own images and
once with the images shuffled among the questions, and compare. A model that ignores the image
scores the same both times (gap 0); one that reads it loses the answers that depend on the image.

Accuracy is closed-set ranking, as :func:`f3ocus_core.training.evaluate` computes it in ``rank``
mode: the answer with the highest score must be one of the question's answers. The shuffle is a
seeded cyclic shift of a random order, so no question keeps its own row's image (two questions about
the same image can still swap it with each other; on easy-vqa that is about 3 in 1,000).
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np
import torch

from f3ocus_core.devices import model_device, to_device
from f3ocus_core.models import logits_of

Collate = Callable[[list[dict]], dict[str, torch.Tensor]]


def shuffled_images(n: int, seed: int) -> np.ndarray:
    """For each of ``n`` questions, the index of the question whose image it gets: a seeded
    permutation with no fixed point (``n >= 2``)."""
    if n < 2:
        raise ValueError("Shuffling images needs at least two questions.")
    order = np.random.default_rng(seed).permutation(n)
    donor = np.empty(n, dtype=np.int64)
    donor[order] = np.roll(order, -1)
    return donor


@torch.no_grad()
def image_ablation(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    collate: Collate,
    group_of: Callable[[list[str]], str] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` on ``dataset`` with the real images and with the images shuffled among
    the questions (:func:`shuffled_images`), and their difference.

    Parameters
    ----------
    model, dataset, collate
        A model of any family, rows with ``image``, ``question`` and ``answers``, and the family's
        collate for the model's answer set (:func:`f3ocus_core.training.make_collate`).
    group_of : callable, optional
        Maps a row's answers to a question group (for easy-vqa :func:`f3ocus_core.data.easy_vqa.answer_type`:
        ``colour``, ``shape``, ``yes/no``); each group gets its own figures.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    dict
        ``real``, ``shuffled``, ``gap`` (real - shuffled) and ``n``; with ``group_of``, also
        ``<group>.real``, ``<group>.shuffled``, ``<group>.gap`` and ``<group>.n`` for every group.
    """
    n = len(dataset)
    donor = shuffled_images(n, seed)
    device = model_device(model) if device is None else torch.device(device)
    model.to(device)
    model.eval()
    right = {"real": np.zeros(n, dtype=bool), "shuffled": np.zeros(n, dtype=bool)}
    everything = [dataset[i] for i in range(n)]  # each image decoded once, used twice
    for start in range(0, n, batch_size):
        index = list(range(start, min(n, start + batch_size)))
        rows = [everything[i] for i in index]
        shuffled = [{**row, "image": everything[int(donor[i])]["image"]} for row, i in zip(rows, index)]
        for mode, batch_rows in (("real", rows), ("shuffled", shuffled)):
            batch = to_device(collate(batch_rows), device)
            labels = batch["labels"]
            top = logits_of(model, batch).float().argmax(dim=1)
            hit = labels[torch.arange(len(index), device=labels.device), top] > 0
            right[mode][index] = hit.cpu().numpy()
    result = _figures(right, np.ones(n, dtype=bool))
    if group_of is not None:
        groups = np.array([group_of(list(answers)) for answers in dataset["answers"]])
        for group in sorted(set(groups.tolist())):
            for key, value in _figures(right, groups == group).items():
                result[f"{group}.{key}"] = value
    return result


def _figures(right: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    real, shuffled = float(right["real"][rows].mean()), float(right["shuffled"][rows].mean())
    return {"real": real, "shuffled": shuffled, "gap": real - shuffled, "n": float(rows.sum())}
