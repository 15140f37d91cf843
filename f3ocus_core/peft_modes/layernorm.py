"""``layernorm``: LayerNorm tuning (via ``peft``'s ``LNTuningConfig``): a trainable copy of every
normalisation module inside each layer (LayerNorm, RMSNorm: any module whose class name ends in
``Norm``); a layer's units are the copies' weights and biases. Saved in PEFT format.

The copy starts equal to the frozen original and replaces it in the forward pass, so the model's
outputs, and the LNTK of its own weights (which counts the copies), are those of the bare model.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from f3ocus_core.layers import LayerMap
from f3ocus_core.peft_modes.targets import layer_modules

if TYPE_CHECKING:
    from f3ocus_core.peft_settings import PeftSettings

PEFT_FORMAT = True


def norm_modules(model: torch.nn.Module, layer_map: LayerMap) -> list[list[str]]:
    """Per layer, the names of its normalisation modules (with parameters)."""
    return [
        [
            name
            for name, module in layer
            if type(module).__name__.endswith("Norm") and any(True for _ in module.parameters(recurse=False))
        ]
        for layer in layer_modules(model, layer_map)
    ]


def unfit(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> str | None:
    """Why some layer cannot take LayerNorm tuning (no normalisation module with weights), or ``None``."""
    empty = [layer_map.names[i] for i, names in enumerate(norm_modules(model, layer_map)) if not names]
    if empty:
        return f"'layernorm' needs a normalisation module with weights in every layer; {empty[:4]} have none"
    return None


def attach(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Wrap ``model`` with trainable copies of every layer's normalisation modules."""
    from peft import LNTuningConfig, get_peft_model

    norms = norm_modules(model, layer_map)
    pattern = "|".join(re.escape(name) for names in norms for name in names)
    return get_peft_model(model, LNTuningConfig(target_modules=pattern))


def is_unit(name: str) -> bool:
    """Whether parameter ``name`` belongs to a trainable normalisation copy."""
    return "ln_tuning_layers" in name
