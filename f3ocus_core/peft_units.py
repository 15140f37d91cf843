"""The trainable units of each layer, and making only the assigned layers' units trainable.

F3OCUS assigns different layers to different clients every round, so the global model carries a
unit in *every* layer and each client trains only those of its assigned layers (plus its personal
answer head); everything else stays frozen and is not sent back.

Methods (``peft.method``; one module each in :mod:`f3ocus_core.peft_modes`, docs/peft.md):
``lora``, ``adapter`` (Pfeiffer bottleneck), ``layernorm``, ``bias`` (BitFit), ``prompt`` (deep
prompt tuning), ``ia3``, and ``full`` (a layer's units are all of its own weights).

The federated state is a flat ``{parameter name: array}`` dict of every layer's units;
:class:`UnitMap` says which names belong to which layer. :func:`save_adapter` writes a run's result
and :func:`load_adapter` reads it back onto its base model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from f3ocus_core.layers import LayerMap
from f3ocus_core.peft_modes import PEFT_METHODS, check_method, peft_mode
from f3ocus_core.peft_modes.targets import target_regex
from f3ocus_core.peft_settings import PeftSettings

__all__ = [
    "PEFT_METHODS",
    "PeftSettings",
    "UnitMap",
    "attach_units",
    "get_state",
    "head_names",
    "load_adapter",
    "save_adapter",
    "set_state",
    "set_trainable",
    "target_regex",
    "unit_map",
]

#: Parameter-name prefixes of the personal answer head (ViLT's ``classifier``), PEFT-wrapped or not.
HEAD_MARKERS = ("classifier.",)
#: Files of the project's own format (the modes not saved in ``peft``'s).
SETTINGS_FILE = "f3ocus_peft.json"
UNITS_FILE = "units.safetensors"


def attach_units(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Return ``model`` with the units of ``settings.method`` in every layer (wrapped by ``peft``
    for ``lora``/``ia3``/``layernorm``), everything frozen.

    Raises
    ------
    ConfigError
        Naming ``peft.method`` (unknown, or a mode this model's layers cannot take) or
        ``peft.target-modules`` (no match in some layer), with what would work.
    """
    check_method(model, layer_map, settings)
    model = peft_mode(settings.method).attach(model, layer_map, settings)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@dataclass(frozen=True)
class UnitMap:
    """Per layer, the parameter names of its trainable units."""

    names: tuple[tuple[str, ...], ...]

    def keys_of(self, layers: list[int] | np.ndarray) -> list[str]:
        """The unit names of ``layers``, in layer order."""
        return [name for layer in sorted(int(l) for l in layers) for name in self.names[layer]]

    def all_keys(self) -> list[str]:
        return self.keys_of(list(range(len(self.names))))


def unit_map(model: torch.nn.Module, layer_map: LayerMap, method: str) -> UnitMap:
    """The :class:`UnitMap` of a model prepared by :func:`attach_units`.

    Raises
    ------
    ValueError
        If some layer has no unit (for LoRA: no target module inside that layer).
    """
    is_unit = peft_mode(method).is_unit
    per_layer: list[list[str]] = [[] for _ in layer_map.names]
    for name, _ in model.named_parameters():
        layer = layer_map.layer_index(name)
        if layer is None:
            continue
        if is_unit(name):
            per_layer[layer].append(name)
    for layer, names in enumerate(per_layer):
        if not names:
            raise ValueError(
                f"Layer {layer_map.names[layer]!r} has no trainable unit for peft.method={method!r}; "
                "check peft.target-modules."
            )
    return UnitMap(tuple(tuple(names) for names in per_layer))


def head_names(model: torch.nn.Module) -> list[str]:
    """Names of the personal answer head's parameters."""
    return [name for name, _ in model.named_parameters() if any(m in name for m in HEAD_MARKERS)]


def set_trainable(model: torch.nn.Module, units: UnitMap, layers: list[int], head: bool = True) -> list[str]:
    """Freeze everything, then unfreeze the units of ``layers`` (and the head); return trainable names."""
    wanted = set(units.keys_of(layers))
    if head:
        wanted.update(head_names(model))
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
        if name in wanted:
            trainable.append(name)
    return trainable


def get_state(model: torch.nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    """Copies of the named parameters as float32 numpy arrays on the CPU (what travels in an
    ``ArrayRecord``), whatever the model's device and dtype."""
    params = dict(model.named_parameters())
    missing = [name for name in names if name not in params]
    if missing:
        raise KeyError(f"The model has no parameters named {missing[:3]}.")
    return {name: params[name].detach().to("cpu", torch.float32).numpy().copy() for name in names}


def set_state(model: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    """Write ``state`` into the model's parameters of the same names.

    Raises
    ------
    ValueError
        If a name is unknown or a shape differs: the sender and this model do not match.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if name not in params:
                raise ValueError(f"Received parameter {name!r} that this model does not have.")
            if tuple(params[name].shape) != tuple(value.shape):
                raise ValueError(
                    f"Received {name!r} with shape {tuple(value.shape)}, model has {tuple(params[name].shape)}."
                )
            params[name].copy_(torch.from_numpy(np.asarray(value)))


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
    if mode.PEFT_FORMAT or settings.method == "full":
        if not isinstance(model, PeftModel | PreTrainedModel):
            raise TypeError(
                f"peft.method={settings.method!r} saves with save_pretrained, which a "
                f"{type(model).__name__} lacks: pass the PEFT or Hugging Face model."
            )
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
