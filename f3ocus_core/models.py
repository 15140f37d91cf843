"""Vision-language models, whatever their family: loading, the answer head, and the forward and loss
F3OCUS uses.

A *batch* everywhere in ``f3ocus_core`` is a dict of tensors as a family's collate makes it
(:func:`f3ocus_core.training.make_collate`: ``input_ids``, ``attention_mask``, ``pixel_values``, ...)
plus ``labels``: a float tensor ``(n, num_labels)`` of targets (one-hot for VQA, multi-hot for
multi-label tasks). :func:`logits_of` returns one score per label whatever the family: a classifier
head's logits (ViLT), or for generative families the log-odds of generating each answer
(:mod:`f3ocus_core.families.generative`). Both are trained with binary cross-entropy, as ViLT's VQA
head is, so one loss serves both kinds of task. The family-specific code lives in
:mod:`f3ocus_core.families`; the ViLT helpers are re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from f3ocus_core.families import family_of, family_of_type, unwrap
from f3ocus_core.families.base import model_inputs
from f3ocus_core.families.vilt import (
    SPECIAL_TOKENS,
    build_processor,
    random_batch,
    tiny_vilt,
    tiny_vilt_config,
)
from f3ocus_core.families.vilt import set_answer_head as _set_vilt_head

__all__ = [
    "SPECIAL_TOKENS",
    "build_processor",
    "load_vqa_model",
    "logits_of",
    "loss_of",
    "model_inputs",
    "random_batch",
    "set_answer_head",
    "tiny_vilt",
    "tiny_vilt_config",
]


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Answer scores ``(n, num_labels)`` of ``model`` on ``batch`` (its family's task forward).

    A model without a Hugging Face config (a plain ``torch.nn.Module``) is called with the batch's
    inputs and must return an object with ``.logits``.
    """
    if getattr(unwrap(model), "config", None) is None:
        return model(**model_inputs(batch)).logits
    return family_of(model).logits(model, batch)


def loss_of(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy of ``logits`` against ``batch["labels"]``, summed over labels and
    averaged over examples (ViLT's VQA loss)."""
    labels = batch["labels"].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / logits.shape[0]


def set_answer_head(model: torch.nn.Module, labels: list[str], seed: int = 0) -> None:
    """Give ``model`` an answer head over ``labels``, keeping the trained rows of known answers.

    For ViLT: rows of answers that the current head already has (by ``config.id2label``) are copied;
    the rest start from a seeded random initialisation; ``config.id2label``/``label2id``/``num_labels``
    are updated. Generative families have no head (the answers are scored as text, and the collate
    carries the answer set), so for them this only checks ``labels``.
    """
    if not labels:
        raise ValueError("The answer head needs at least one label.")
    if len(set(labels)) != len(labels):
        raise ValueError("The labels of an answer head must be distinct.")
    if not family_of(model).generative:
        _set_vilt_head(unwrap(model), labels, seed)


def load_vqa_model(path: str, attn_implementation: str = "eager") -> tuple[torch.nn.Module, object]:
    """Load a question-answering model of any family and its processor with ``from_pretrained``.

    ``path`` is a local folder or a Hugging Face hub id (such as ``dandelin/vilt-b32-finetuned-vqa``,
    ``Salesforce/blip-vqa-base`` or ``llava-hf/llava-1.5-7b-hf``); hub ids need network access or a
    filled HF cache. The family comes from the saved ``config.json``'s ``model_type``.

    Raises
    ------
    ValueError
        Naming ``model.name`` when nothing loadable is found there, or when its model type belongs to
        no family (listing the families).
    """
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model.name: cannot load a question-answering model and processor from {path!r} "
            f"({error}). Give a local folder written by save_pretrained, a hub id with network "
            "access, or a built-in base such as 'builtin:tiny-vilt-easyvqa'."
        ) from error
    family = family_of_type(model_type)
    try:
        processor = family.processor_class.from_pretrained(path)
        model = family.model_class.from_pretrained(path, attn_implementation=attn_implementation)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model.name: cannot load a {family.name} model ({family.model_class.__name__}) and processor "
            f"from {path!r} ({error}). Give a local folder written by save_pretrained, a hub id with "
            "network access, or the built-in base 'builtin:tiny-" + family.name + "-easyvqa'."
        ) from error
    return model.eval(), processor
