"""``bias``: BitFit (Ben Zaken et al., 2022), tuning only the bias terms; a layer's units are the
biases of its own modules (linear and normalisation). No module is added, so nothing changes in
the forward pass; ``peft`` has no BitFit, so the result is saved in this package's own format
(:func:`f3ocus_core.peft_units.save_adapter`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from f3ocus_core.layers import LayerMap, is_peft_parameter

if TYPE_CHECKING:
    from f3ocus_core.peft_settings import PeftSettings

PEFT_FORMAT = False


def unfit(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> str | None:
    """Why some layer cannot take BitFit (none of its own modules has a bias, as in Llama and Gemma
    decoder layers), or ``None``."""
    empty = [
        layer_map.names[i]
        for i, params in enumerate(layer_map.own_parameters(model))
        if not any(is_unit(name) for name, _ in params)
    ]
    if empty:
        return f"'bias' needs bias terms in every layer; {empty[:4]}{' ...' if len(empty) > 4 else ''} have none"
    return None


def attach(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Return ``model`` as it is (its biases are the units)."""
    return model


def is_unit(name: str) -> bool:
    """Whether parameter ``name`` is a bias of the layer's own modules."""
    return name.endswith(".bias") and not is_peft_parameter(name)
