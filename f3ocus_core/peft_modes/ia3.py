"""``ia3``: IA3 (via ``peft``), learned scaling vectors on the ``peft.target-modules`` linear modules
of every layer; a layer's units are its ``ia3_l`` vectors. Saved in PEFT format.

IA3 scales a module's output, except for feed-forward down-projections, whose input it scales (the
paper's ``l_ff``). Which targets are those is read from the shapes, so that it holds for any family:
a target whose input is wider than its output (ViLT's ``output.dense``, LLaMA's ``down_proj``); when
no target is one (LoRA-style ``q_proj,v_proj`` targets), every vector scales an output.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from f3ocus_core.layers import LayerMap
from f3ocus_core.peft_modes.targets import check_targets, target_regex

if TYPE_CHECKING:
    from f3ocus_core.peft_settings import PeftSettings

PEFT_FORMAT = True


def attach(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Wrap ``model`` with IA3 vectors on every layer's target modules."""
    from peft import IA3Config, get_peft_model

    matched = check_targets(model, layer_map, settings.target_modules)
    feedforward = [name for layer in matched for name, module in layer if module.in_features > module.out_features]
    config = IA3Config(
        target_modules=target_regex(layer_map, settings.target_modules),
        feedforward_modules="|".join(re.escape(name) for name in feedforward) or [],
    )
    return get_peft_model(model, config)


def unfit(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> str | None:
    """Always ``None``: any layer with linear modules takes IA3 (which ones is ``peft.target-modules``'s
    matter, checked by :func:`attach`)."""
    return None


def is_unit(name: str) -> bool:
    """Whether parameter ``name`` is an IA3 scaling vector."""
    return "ia3_l" in name
