"""``adapter``: the Pfeiffer bottleneck adapter (Pfeiffer et al., 2021) after the feed-forward
output of every layer; a layer's units are its adapters' down and up projections.

``y = FFN_out(x);  y + W_up ReLU(W_down y)`` with ``W_down: d -> d / r`` (``peft.adapter-reduction``
r, 16 as in the paper) and ``W_up`` starting at zero, so the adapter starts as the identity. The
feed-forward output is found by shape, so it holds for any family: every ``nn.Linear`` inside a
layer whose input is wider than its output (ViLT's ``output.dense``, CLIP's ``fc2``, LLaMA's
``down_proj``). The original linear becomes the wrapper's ``base_layer`` (as with LoRA), whose
own weights LNTK scores unchanged. ``peft`` has no bottleneck adapter, so the result is saved in
this package's own format (:func:`f3ocus_core.peft_units.save_adapter`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from f3ocus_core.layers import LayerMap
from f3ocus_core.peft_modes.targets import layer_modules

if TYPE_CHECKING:
    from f3ocus_core.peft_settings import PeftSettings

PEFT_FORMAT = False


class BottleneckAdapter(nn.Module):
    """A linear module followed by a residual bottleneck: ``y + up(relu(down(y)))``."""

    def __init__(self, base_layer: nn.Linear, reduction: int) -> None:
        super().__init__()
        width = base_layer.out_features
        self.base_layer = base_layer
        self.adapter_down = nn.Linear(width, max(1, width // reduction))
        self.adapter_up = nn.Linear(self.adapter_down.out_features, width)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)
        self.to(base_layer.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y + self.adapter_up(F.relu(self.adapter_down(y)))


def feedforward_outputs(model: nn.Module, layer_map: LayerMap) -> list[list[str]]:
    """Per layer, the names of its feed-forward down-projections (linear, input wider than output)."""
    return [
        [name for name, module in layer if type(module) is nn.Linear and module.in_features > module.out_features]
        for layer in layer_modules(model, layer_map)
    ]


def unfit(model: nn.Module, layer_map: LayerMap, settings: PeftSettings) -> str | None:
    """Why some layer cannot take an adapter (it has no feed-forward down-projection), or ``None``."""
    empty = [layer_map.names[i] for i, names in enumerate(feedforward_outputs(model, layer_map)) if not names]
    if empty:
        return (
            f"'adapter' needs a feed-forward output (a linear module narrowing its input) in every layer; "
            f"{empty[:4]} have none"
        )
    return None


def attach(model: nn.Module, layer_map: LayerMap, settings: PeftSettings) -> nn.Module:
    """Wrap every layer's feed-forward output in a :class:`BottleneckAdapter` (in place); a model
    that :func:`unfit` refuses gets no adapter in some layer."""
    for name in (name for names in feedforward_outputs(model, layer_map) for name in names):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, BottleneckAdapter(getattr(owner, child), settings.adapter_reduction))
    return model


def is_unit(name: str) -> bool:
    """Whether parameter ``name`` belongs to a bottleneck adapter."""
    return ".adapter_down." in name or ".adapter_up." in name
