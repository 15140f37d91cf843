"""The PEFT modes F3OCUS trains as per-layer units, one module per mode, and saving/loading results.

Every mode gives every layer of the :class:`~f3ocus_core.layers.LayerMap` its own units, so that
scoring, assignment, training, transport and averaging treat them all alike. A mode module has

- ``unfit(model, layer_map, settings) -> str | None``: why the model's layers cannot take the mode
  (``None`` when they can), read from the modules alone, before anything is attached;
- ``attach(model, layer_map, settings) -> model``: add the units (or wrap with ``peft``);
- ``is_unit(name) -> bool``: whether a parameter inside a layer is one of its units;
- ``PEFT_FORMAT``: whether the result saves in ``peft``'s format (:func:`save_adapter`).

Modes: ``lora``, ``ia3``, ``layernorm`` (``peft``); ``adapter``, ``bias``, ``prompt`` (modules of
this package, saved in its own format: ``f3ocus_peft.json`` + ``units.safetensors``); ``full``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from f3ocus_core.errors import ConfigError
from f3ocus_core.peft_modes import adapter, bias, full, ia3, layernorm, lora, prompt

if TYPE_CHECKING:
    from f3ocus_core.layers import LayerMap
    from f3ocus_core.peft_units import PeftSettings, UnitMap

MODES: dict[str, ModuleType] = {"lora": lora, "adapter": adapter, "layernorm": layernorm, "bias": bias,
                                "prompt": prompt, "ia3": ia3, "full": full}
#: The values of ``peft.method``.
PEFT_METHODS: tuple[str, ...] = tuple(MODES)
#: Files of this package's own format.
SETTINGS_FILE = "f3ocus_peft.json"
UNITS_FILE = "units.safetensors"


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


def save_adapter(model: torch.nn.Module, folder: str | Path, settings: PeftSettings, units: UnitMap) -> Path:
    """Save the units of every layer to ``folder``: PEFT format (``save_pretrained`` of the PEFT
    model) for ``lora``/``ia3``/``layernorm``, the whole model for ``full``, and for the others the
    units by parameter name (``units.safetensors``) with the settings that re-create the modules
    (``f3ocus_peft.json``). Load it back with :func:`load_adapter`."""
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import PreTrainedModel

    folder = Path(folder)
    mode = peft_mode(settings.method)
    if mode.PEFT_FORMAT or mode is full:
        if not isinstance(model, PeftModel | PreTrainedModel):
            raise TypeError(f"peft.method={settings.method!r} saves with save_pretrained, which a "
                            f"{type(model).__name__} lacks: pass the PEFT or Hugging Face model.")
        model.save_pretrained(str(folder))
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    save_file({name: params[name].detach().cpu().contiguous() for name in units.all_keys()}, str(folder / UNITS_FILE))
    (folder / SETTINGS_FILE).write_text(json.dumps({"method": settings.method, "settings": asdict(settings)}, indent=2))
    return folder


def load_adapter(base: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """``base`` (the model the units were trained on) with the units saved in ``folder`` by
    :func:`save_adapter`: ``peft.PeftModel.from_pretrained`` for PEFT format, else the mode's
    modules attached and the saved tensors loaded. A ``full`` result loads with ``from_pretrained``."""
    from safetensors.torch import load_file

    from f3ocus_core.layers import layer_map_for
    from f3ocus_core.peft_units import PeftSettings, set_state

    folder = Path(folder)
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(folder))
    if not (folder / SETTINGS_FILE).exists():
        raise ValueError(f"{folder} holds neither a PEFT adapter (adapter_config.json) nor {SETTINGS_FILE}.")
    saved = json.loads((folder / SETTINGS_FILE).read_text())["settings"]
    settings = PeftSettings(**{**saved, "target_modules": tuple(saved["target_modules"])})
    model = peft_mode(settings.method).attach(base, layer_map_for(base), settings)
    set_state(model, {name: value.float().numpy() for name, value in load_file(str(folder / UNITS_FILE)).items()})
    return model.eval()
