"""Local training and evaluation: batching a client's data through the processor, the train loop,
and the metrics (accuracy for VQA, F1 for multi-label classification).

Only parameters with ``requires_grad`` train; :mod:`f3ocus_core.peft_units` decides which those are.
Both run on a given device (see :mod:`f3ocus_core.devices`) and leave the model there; mixed
precision (``train.precision``) only autocasts the forward pass, so weights stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch

from f3ocus_core.devices import autocast, check_precision, grad_scaler, model_device, to_device
from f3ocus_core.families import family_of, family_of_processor
from f3ocus_core.models import logits_of, loss_of

Batch = dict[str, torch.Tensor]
Collate = Callable[[list[dict]], Batch]

#: The values of ``eval.answer-mode``: closed-set ranking, or exact match of greedy generation.
ANSWER_MODES: tuple[str, ...] = ("rank", "generate")


def make_collate(processor: object, labels: list[str], max_text_len: int = 40, multi_label: bool = False) -> Collate:
    """A function that turns rows (``image``, ``question``, ``answers``) into a model batch, as the
    processor's model family lays it out (:mod:`f3ocus_core.families`).

    Images are converted to RGB (medical sets are often grey-scale); answers become a multi-hot
    ``labels`` target over ``labels``; answers outside ``labels`` contribute nothing to the target.
    Generative families also get the answer set tokenised (``answer_ids``, ``answer_mask``); with
    ``multi_label`` (a ``"multilabel"`` task) each label as a yes/no question instead
    (:mod:`f3ocus_core.families.generative`).
    """
    return family_of_processor(processor).make_collate(processor, labels, max_text_len, multi_label)


def iterate_batches(
    dataset: datasets.Dataset, collate: Collate, batch_size: int, shuffle: bool = False, seed: int = 0
) -> Iterator[Batch]:
    """Batches of ``dataset`` in order, or in a seeded shuffled order."""
    order = np.arange(len(dataset))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(dataset))
    for start in range(0, len(order), batch_size):
        yield collate([dataset[int(i)] for i in order[start : start + batch_size]])


def first_batch(dataset: datasets.Dataset, collate: Collate, size: int, seed: int) -> Batch:
    """A seeded random batch of ``size`` rows: the local batch that layer scoring uses."""
    if len(dataset) == 0:
        raise ValueError("Cannot draw a batch from an empty dataset.")
    return next(iterate_batches(dataset, collate, size, shuffle=True, seed=seed))


@dataclass
class TrainSettings:
    """Local optimisation: AdamW with linear warm-up then linear decay.

    The defaults are this project's, not FedDAT's ViLT recipe (which is AdamW, lr 1e-4, weight decay
    0.01, 10% warm-up, 1 local epoch, with Pfeiffer adapters). We keep its optimiser, weight decay
    and warm-up but train LoRA units at lr 5e-3 for 2 epochs: LoRA's B starts at zero and its
    updates are low-rank, so it needs a larger learning rate than adapters or full weights; the
    built-in base model is a tiny ViLT from a short pretraining; and the default run has only a few
    rounds, so each round's local training must move the model. For a pretrained ViLT-B with many
    rounds, a smaller ``train.lr`` (1e-4 to 1e-3) is the safer start.

    Parameters
    ----------
    epochs : int
        Passes over the local train part.
    lr : float
        Peak learning rate.
    weight_decay : float
        AdamW weight decay.
    batch_size : int
        Examples per step.
    warmup : float
        Share of the steps spent warming up.
    max_steps : int
        Stop after this many steps (0: no limit).
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the forward pass; ``fp16`` also scales the loss (GradScaler). Weights
        and optimizer state stay float32.
    """

    epochs: int = 2
    lr: float = 5e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    warmup: float = 0.1
    max_steps: int = 0
    precision: str = "fp32"


def train(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    collate: Collate,
    settings: TrainSettings,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Train ``model``'s trainable parameters on ``dataset``; return ``loss`` (mean) and ``steps``.

    The model is moved to ``device`` (default: where its parameters are) and left there; batches
    are moved as they are drawn. The forward pass runs under ``settings.precision``'s autocast.

    Raises
    ------
    ValueError
        If nothing is trainable, the dataset is empty, the loss stops being finite, or
        ``settings.precision`` cannot run on ``device`` (naming ``train.precision``).
    """
    device = model_device(model) if device is None else torch.device(device)
    check_precision(device, settings.precision)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("No trainable parameters: nothing to train.")
    if len(dataset) == 0:
        raise ValueError("Cannot train on an empty dataset.")
    steps_per_epoch = math.ceil(len(dataset) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if settings.max_steps > 0:
        total = min(total, settings.max_steps)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, int(settings.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    # Dropout draws from torch's generator: seeded here (in a fork, so the caller's stream is left as
    # it was), training is a function of the seed, which a resumed run relies on.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.to(device)
        scaler = grad_scaler(device, settings.precision)
        model.train()
        losses: list[float] = []
        step = 0
        for epoch in range(settings.epochs):
            for batch in iterate_batches(dataset, collate, settings.batch_size, True, seed + epoch):
                batch = to_device(batch, device)
                with autocast(device, settings.precision):
                    logits = logits_of(model, batch)
                loss = loss_of(logits.float(), batch)
                if not torch.isfinite(loss):
                    raise ValueError(
                        f"Training loss became {loss.item()} at step {step}; lower train.lr"
                        + (" or use train.precision=bf16/fp32." if settings.precision == "fp16" else ".")
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                scheduler.step()
                losses.append(loss.item())
                step += 1
                if on_step is not None:
                    on_step(step, losses[-1])
                if step >= total:
                    break
            if step >= total:
                break
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": float(np.mean(losses)), "steps": float(step)}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    collate: Collate,
    kind: str,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    answer_mode: str = "rank",
) -> dict[str, float]:
    """Loss and task metric of ``model`` on ``dataset``, computed on ``device`` (default: where the
    model's parameters are; the model is moved there and left there) with
    the forward pass under ``precision``'s autocast; loss and metrics are computed in float32.

    VQA (``kind="vqa"``): ``accuracy``, the share of examples whose top answer is one of its answers.
    Multi-label: ``f1``, micro-averaged F1 of sigmoid > 0.5 decisions. Both also give ``metric`` (the
    task's metric under one name, whichever it is) and ``loss``.

    ``answer_mode`` (``eval.answer-mode``) matters for generative families only: ``"rank"`` decides by
    the answer scores (closed-set ranking), ``"generate"`` by exact match of greedy generation with
    an answer of the set (an example that generates none of them is wrong, and has no label). The
    loss is the ranking loss in both modes.
    """
    if answer_mode not in ANSWER_MODES:
        raise ValueError(f"eval.answer-mode: unknown mode {answer_mode!r}; choose one of {ANSWER_MODES}.")
    generate = family_of(model).generate if answer_mode == "generate" else None
    if len(dataset) == 0:
        raise ValueError("Cannot evaluate on an empty dataset.")
    device = model_device(model) if device is None else torch.device(device)
    check_precision(device, precision)
    model.to(device)
    model.eval()
    total_loss, correct = 0.0, 0.0
    tp = fp = fn = 0.0
    for batch in iterate_batches(dataset, collate, batch_size):
        batch = to_device(batch, device)
        with autocast(device, precision):
            logits = logits_of(model, batch).float()
        labels = batch["labels"]
        total_loss += loss_of(logits, batch).item() * len(labels)
        if generate is not None:
            decided = generate(model, batch).to(labels.device)
            if kind == "vqa":
                correct += (decided * labels).amax(dim=1).clamp(max=1).sum().item()
            else:
                tp += (decided * labels).sum().item()
                fp += (decided * (1 - labels)).sum().item()
                fn += ((1 - decided) * labels).sum().item()
        elif kind == "vqa":
            top = logits.argmax(dim=1)
            correct += labels[torch.arange(len(labels), device=labels.device), top].clamp(max=1).sum().item()
        else:
            decided = (torch.sigmoid(logits) > 0.5).float()
            tp += (decided * labels).sum().item()
            fp += (decided * (1 - labels)).sum().item()
            fn += ((1 - decided) * labels).sum().item()
    n = len(dataset)
    metrics = {"loss": total_loss / n}
    if kind == "vqa":
        metrics["accuracy"] = correct / n
        metrics["metric"] = metrics["accuracy"]
    else:
        metrics["f1"] = 2 * tp / max(1.0, 2 * tp + fp + fn)
        metrics["metric"] = metrics["f1"]
    return metrics
