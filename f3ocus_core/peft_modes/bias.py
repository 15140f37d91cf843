"""``bias``: BitFit (Ben Zaken et al., 2022), tuning only the bias terms; a layer's units are the
biases of its own modules (linear and normalisation). No module is added, so nothing changes in
the forward pass; ``peft`` has no BitFit, so the result is saved in this package's own format
(:func:`f3ocus_core.peft_modes.save_adapter`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from f3ocus_core.layers import LayerMap, is_peft_parameter

if TYPE_CHECKING:
    from f3ocus_core.peft_units import PeftSettings

PEFT_FORMAT = False


def attach(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Return ``model`` as it is (its biases are the units)."""
    return model


def is_unit(name: str) -> bool:
    """Whether parameter ``name`` is a bias of the layer's own modules."""
    return name.endswith(".bias") and not is_peft_parameter(name)
