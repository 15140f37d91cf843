"""The model as both apps prepare it: resolve the path, load, map layers, attach units, map units.

The server and every client must agree on the layer ids and on the unit names of each layer (they
are the keys of every ``ArrayRecord``), so both build them with :func:`set_up_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from f3ocus_core.config import RunSettings
from f3ocus_core.families import family_of
from f3ocus_core.layers import LayerMap, layer_map_for
from f3ocus_core.models import load_vqa_model
from f3ocus_core.peft_units import PeftSettings, UnitMap, attach_units, unit_map
from f3ocus_core.pretrain import resolve_model_path


@dataclass(frozen=True)
class ModelSetup:
    """A loaded model with its trainable units attached (all frozen), and what describes it."""

    path: str
    model: torch.nn.Module
    processor: object
    layer_map: LayerMap
    units: UnitMap


def model_path(settings: RunSettings) -> str:
    """The folder or hub id ``model.name`` resolves to (building the built-in checkpoint if missing)."""
    model = settings.model
    return resolve_model_path(model.name, model.cache_dir, model.pretrain_steps, settings.seed, model.pretrain_exclude)


def set_up_model(path: str, peft: PeftSettings, seed: int = 0) -> ModelSetup:
    """Load the model at ``path`` and attach the units of ``peft`` to every layer.

    ``peft.target_modules`` left at its default becomes the model family's own LoRA targets (the
    default names ViLT's modules).

    The units' initial values (LoRA's random ``A``) are drawn from ``seed`` in a forked RNG, so two
    runs with the same seed start from the same global model and the caller's RNG is left as it was.

    Raises
    ------
    ValueError
        If ``peft`` leaves some layer without a unit (for LoRA: no target module in that layer).
    """
    model, processor = load_vqa_model(path)
    if peft.target_modules == PeftSettings.target_modules:
        peft = replace(peft, target_modules=family_of(model).lora_targets)
    layer_map = layer_map_for(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = attach_units(model, layer_map, peft)
    return ModelSetup(path, model, processor, layer_map, unit_map(model, layer_map, peft.method))
