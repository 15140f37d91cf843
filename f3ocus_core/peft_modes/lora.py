"""``lora``: LoRA (via ``peft``) on the ``peft.target-modules`` linear modules of every layer; a
layer's units are its ``lora_A``/``lora_B`` matrices. Saved in PEFT format."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from f3ocus_core.layers import LayerMap
from f3ocus_core.peft_modes.targets import check_targets, target_regex

if TYPE_CHECKING:
    from f3ocus_core.peft_settings import PeftSettings

PEFT_FORMAT = True


def attach(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters in every layer's target modules."""
    from peft import LoraConfig, get_peft_model

    check_targets(model, layer_map, settings.target_modules)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_regex(layer_map, settings.target_modules),
    )
    return get_peft_model(model, config)


def unfit(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> str | None:
    """Always ``None``: any layer with linear modules takes LoRA (which ones is ``peft.target-modules``'s
    matter, checked by :func:`attach`)."""
    return None


def is_unit(name: str) -> bool:
    """Whether parameter ``name`` is a LoRA factor."""
    return "lora_" in name
