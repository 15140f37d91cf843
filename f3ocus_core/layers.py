"""Which blocks of a vision-language model are the "layers" that F3OCUS scores, assigns and averages.

Every other module speaks in layer indices ``0..L-1`` from a :class:`LayerMap`. A layer is one
transformer block of one tower; single-stream models (ViLT) have one tower, multi-tower models (BLIP,
LLaVA) have one entry per tower, and their layers are numbered tower by tower in the order vision,
(Q-Former,) text/language, decoder (:mod:`f3ocus_core.families` lists each family's towers).

A parameter belongs to layer ``l`` when its name matches that tower's regex with block number ``k``.
The match is a search, so the names of a PEFT-wrapped model (``base_model.model.vilt...``) map the
same as the bare model's. Parameters of PEFT units (LoRA, adapters, ...) carry a marker in their
name; :meth:`LayerMap.own_parameters` leaves them out, because the paper scores a layer's own weights
(a fresh LoRA adapter has ``B = 0``, which makes its ``A`` gradients zero).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

#: Per model family: (tower name, regex whose first group is the block number within that tower).
TOWER_PATTERNS: dict[str, tuple[tuple[str, str], ...]] = {
    "vilt": (("layer", r"(?:^|\.)vilt\.encoder\.layer\.(\d+)\."),),
    "bert": (("layer", r"(?:^|\.)encoder\.layer\.(\d+)\."),),
    "blip": (
        ("vision", r"(?:^|\.)vision_model\.encoder\.layers\.(\d+)\."),
        ("text", r"(?:^|\.)text_encoder\.encoder\.layer\.(\d+)\."),
        ("decoder", r"(?:^|\.)text_decoder\.bert\.encoder\.layer\.(\d+)\."),
    ),
    "blip-2": (
        ("vision", r"(?:^|\.)vision_model\.encoder\.layers\.(\d+)\."),
        ("qformer", r"(?:^|\.)qformer\.encoder\.layer\.(\d+)\."),
        ("language", r"(?:^|\.)language_model\.(?:model\.)?decoder\.layers\.(\d+)\."),
    ),
    "llava": (
        ("vision", r"(?:^|\.)vision_tower\.(?:vision_model\.)?encoder\.layers\.(\d+)\."),
        ("language", r"(?:^|\.)language_model\.(?:model\.)?layers\.(\d+)\."),
    ),
    "paligemma": (
        ("vision", r"(?:^|\.)vision_tower\.(?:vision_model\.)?encoder\.layers\.(\d+)\."),
        ("language", r"(?:^|\.)language_model\.(?:model\.)?layers\.(\d+)\."),
    ),
}

#: Substrings that mark a parameter as part of a PEFT unit rather than the layer's own weights.
PEFT_MARKERS: tuple[str, ...] = ("lora_", "adapter", "modules_to_save", "prompt_encoder", "ia3_", "prompt_tokens")


@dataclass(frozen=True)
class LayerMap:
    """The ordered layers of one model.

    Parameters
    ----------
    names : tuple[str, ...]
        One readable id per layer, e.g. ``"layer.3"`` or ``"vision.11"``; position is the layer index.
    towers : tuple[tuple[str, str], ...]
        The (tower name, block regex) pairs the names were built from.
    """

    names: tuple[str, ...]
    towers: tuple[tuple[str, str], ...]

    def __len__(self) -> int:
        return len(self.names)

    def layer_index(self, param_name: str) -> int | None:
        """Index of the layer that owns ``param_name``, or ``None`` (embeddings, heads, poolers)."""
        for tower, pattern in self.towers:
            match = re.search(pattern, param_name)
            if match:
                name = f"{tower}.{match.group(1)}"
                return self.names.index(name) if name in self.names else None
        return None

    def own_parameters(self, model: torch.nn.Module) -> list[list[tuple[str, torch.nn.Parameter]]]:
        """Per layer, the (name, parameter) pairs of the layer's own weights, PEFT units left out.

        Raises
        ------
        ValueError
            If a layer has no parameters, which means the layer map does not fit the model.
        """
        per_layer: list[list[tuple[str, torch.nn.Parameter]]] = [[] for _ in self.names]
        for name, param in model.named_parameters():
            if is_peft_parameter(name):
                continue
            index = self.layer_index(name)
            if index is not None:
                per_layer[index].append((name, param))
        for index, params in enumerate(per_layer):
            if not params:
                raise ValueError(f"Layer {self.names[index]!r} has no parameters in this model.")
        return per_layer


def is_peft_parameter(name: str) -> bool:
    """Whether ``name`` is a parameter of a PEFT unit (LoRA, adapter, saved module copy, prompt)."""
    return any(marker in name for marker in PEFT_MARKERS)


def model_type_of(model: torch.nn.Module) -> str:
    """The Hugging Face ``model_type`` of ``model`` or of the model a PEFT wrapper holds."""
    config = getattr(model, "config", None)
    get_base_model = getattr(model, "get_base_model", None)
    if config is None and get_base_model is not None:
        config = get_base_model().config
    if config is None:
        raise ValueError("The model has no Hugging Face config; cannot tell its family.")
    return config.model_type


def layer_map_for(model: torch.nn.Module) -> LayerMap:
    """Build the :class:`LayerMap` of ``model`` from its family's tower patterns.

    Raises
    ------
    ValueError
        If the family is not known, or no parameter matches its patterns.
    """
    model_type = model_type_of(model)
    if model_type not in TOWER_PATTERNS:
        raise ValueError(
            f"No layer map for model type {model_type!r}; known: {sorted(TOWER_PATTERNS)}. "
            "Add its tower patterns to f3ocus_core.layers.TOWER_PATTERNS."
        )
    towers = TOWER_PATTERNS[model_type]
    blocks: dict[str, set[int]] = {tower: set() for tower, _ in towers}
    for name, _ in model.named_parameters():
        for tower, pattern in towers:
            match = re.search(pattern, name)
            if match:
                blocks[tower].add(int(match.group(1)))
                break
    names = tuple(f"{tower}.{k}" for tower, _ in towers for k in sorted(blocks[tower]))
    if not names:
        raise ValueError(f"No parameter of this {model_type!r} model matches its layer patterns.")
    return LayerMap(names=names, towers=towers)
