"""What the project needs to know about one model family, and the helpers every family shares.

A :class:`Family` is the one place that knows how a family's processor is built, how a batch is laid
out for it, and how its forward pass turns into one score per answer of the client's answer set (the
``(n, A)`` "logits" that training, evaluation and every layer scorer consume). Its towers (the
transformer blocks F3OCUS scores) are those of :data:`f3ocus_core.layers.TOWER_PATTERNS` for its
``model_type``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, ProcessorMixin

Batch = dict[str, torch.Tensor]
Collate = Callable[[list[dict]], Batch]


@dataclass(frozen=True)
class Family:
    """One model family.

    Parameters
    ----------
    name : str
        The family's name in docs and errors (``vilt``, ``blip``, ``llava`` ...).
    model_type : str
        The Hugging Face ``config.model_type`` that identifies it.
    model_class, processor_class : type
        What ``from_pretrained`` loads a saved model and processor of this family with.
    generative : bool
        Whether answers are generated text (scored by teacher-forced likelihood) rather than rows of a
        classification head.
    lora_targets : tuple[str, ...]
        The default ``peft.target-modules`` for this family (linear modules inside every tower's blocks).
    logits : Callable[[Any, Batch], torch.Tensor]
        ``(n, A)`` scores of the answer set on a batch made by ``make_collate``, from the family's model
        (or a PEFT wrapper of it: ``Any`` stands for the model class each family has).
    make_collate : Callable[[Any, list[str], int, bool], Collate]
        ``(processor, answer labels, max text length, multi-label task)`` -> rows-to-batch function;
        ``Any`` is the family's processor class.
    build_processor : Callable[[list[str], list[str]], ProcessorMixin]
        An offline processor whose vocabulary covers the given questions and answers.
    tiny_config : Callable[[Any, list[str]], PreTrainedConfig]
        A tiny configuration for this processor and answer set (hidden 32, 2 layers per tower, 32 px
        images; ViLT keeps its historic 64/4/64 tiny size).
    generate : Callable[[Any, Batch], torch.Tensor] | None
        Greedy generation, as a 0/1 ``(n, A)`` tensor of which answer each example generated exactly
        (all zero when it generated none of them); ``None`` for classifier families.
    """

    name: str
    model_type: str
    model_class: type[PreTrainedModel]
    processor_class: type[ProcessorMixin]
    generative: bool
    lora_targets: tuple[str, ...]
    logits: Callable[[Any, Batch], torch.Tensor]
    make_collate: Callable[[Any, list[str], int, bool], Collate]
    build_processor: Callable[[list[str], list[str]], ProcessorMixin]
    tiny_config: Callable[[Any, list[str]], PreTrainedConfig]
    generate: Callable[[Any, Batch], torch.Tensor] | None = None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a PEFT wrapper (LoRA layers stay injected), or ``model`` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return model if get_base_model is None else get_base_model()


def multi_hot(rows: list[dict], labels: list[str]) -> torch.Tensor:
    """``(n, len(labels))`` targets: 1 where a row's answer is that label; unknown answers count nothing."""
    index = {label: i for i, label in enumerate(labels)}
    target = torch.zeros(len(rows), len(labels))
    for i, row in enumerate(rows):
        for answer in row["answers"]:
            if answer in index:
                target[i, index[answer]] = 1.0
    return target


def model_inputs(batch: Batch) -> Batch:
    """The part of ``batch`` the model reads (everything but ``labels``)."""
    return {key: value for key, value in batch.items() if key != "labels"}
