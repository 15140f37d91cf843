"""The PEFT modes F3OCUS trains as per-layer units, one module per mode.

Every mode gives every layer of the :class:`~f3ocus_core.layers.LayerMap` its own units, so that
scoring, assignment, training, transport and averaging treat them all alike. A mode module has

- ``unfit(model, layer_map, settings) -> str | None``: why the model's layers cannot take the mode
  (``None`` when they can), read from the modules alone, before anything is attached;
- ``attach(model, layer_map, settings) -> model``: add the units (or wrap with ``peft``);
- ``is_unit(name) -> bool``: whether a parameter inside a layer is one of its units;
- ``PEFT_FORMAT``: whether the result saves in ``peft``'s format
  (:func:`f3ocus_core.peft_units.save_adapter`).

Modes: ``lora``, ``ia3``, ``layernorm`` (``peft``); ``adapter``, ``bias``, ``prompt`` (modules of
this package, saved in the project's own format: ``f3ocus_peft.json`` + ``units.safetensors``); ``full``.
The modes read :class:`~f3ocus_core.peft_settings.PeftSettings` and never import
:mod:`f3ocus_core.peft_units`, which builds on them.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

from f3ocus_core.errors import ConfigError
from f3ocus_core.peft_modes import adapter, bias, full, ia3, layernorm, lora, prompt

if TYPE_CHECKING:
    from f3ocus_core.layers import LayerMap
    from f3ocus_core.peft_settings import PeftSettings

MODES: dict[str, ModuleType] = {
    "lora": lora,
    "adapter": adapter,
    "layernorm": layernorm,
    "bias": bias,
    "prompt": prompt,
    "ia3": ia3,
    "full": full,
}
#: The values of ``peft.method``.
PEFT_METHODS: tuple[str, ...] = tuple(MODES)


def peft_mode(method: str) -> ModuleType:
    """The module of ``method``; raise :class:`ConfigError` naming ``peft.method`` if unknown."""
    if method not in MODES:
        raise ConfigError(f"peft.method: unknown method {method!r}; choose one of {list(PEFT_METHODS)}.")
    return MODES[method]


def usable_methods(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> list[str]:
    """The methods whose units every layer of ``model`` can take (``lora`` and ``ia3`` given a
    ``peft.target-modules`` that names linear modules of every layer)."""
    return [name for name, mode in MODES.items() if mode.unfit(model, layer_map, settings) is None]


def check_method(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> None:
    """Stop before anything is attached when the layers of ``model`` cannot take ``settings.method``.

    Raises
    ------
    ConfigError
        Naming ``peft.method``: unknown, or why this model cannot take it and the methods it can.
    """
    reason = peft_mode(settings.method).unfit(model, layer_map, settings)
    if reason is not None:
        usable = usable_methods(model, layer_map, settings)
        raise ConfigError(f"peft.method: {reason}. Use {', '.join(usable[:-1])} or {usable[-1]}.")
