"""``full``: no added module; a layer's units are all of its own weights (whole-layer fine-tuning).
Saved as the whole model with ``save_pretrained``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from f3ocus_core.layers import LayerMap, is_peft_parameter

if TYPE_CHECKING:
    from f3ocus_core.peft_settings import PeftSettings

PEFT_FORMAT = False


def attach(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Return ``model`` as it is."""
    return model


def unfit(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> str | None:
    """Always ``None``: every layer has weights."""
    return None


def is_unit(name: str) -> bool:
    """Every own weight of a layer is a unit."""
    return not is_peft_parameter(name)
