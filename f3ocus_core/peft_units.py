"""The trainable units of each layer, and making only the assigned layers' units trainable.

F3OCUS assigns different layers to different clients every round, so the global model carries a
unit in *every* layer and each client trains only those of its assigned layers (plus its personal
answer head); everything else stays frozen and is not sent back.

Methods (``peft.method``; one module each in :mod:`f3ocus_core.peft_modes`, docs/peft.md):
``lora``, ``adapter`` (Pfeiffer bottleneck), ``layernorm``, ``bias`` (BitFit), ``prompt`` (deep
prompt tuning), ``ia3``, and ``full`` (a layer's units are all of its own weights).

The federated state is a flat ``{parameter name: array}`` dict of every layer's units;
:class:`UnitMap` says which names belong to which layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from f3ocus_core.layers import LayerMap
from f3ocus_core.peft_modes import PEFT_METHODS, check_method, peft_mode
from f3ocus_core.peft_modes.targets import target_regex

__all__ = ["PEFT_METHODS", "PeftSettings", "UnitMap", "attach_units", "get_state", "head_names", "set_state",
           "set_trainable", "target_regex", "unit_map"]

#: Parameter-name prefixes of the personal answer head (ViLT's ``classifier``), PEFT-wrapped or not.
HEAD_MARKERS = ("classifier.",)


@dataclass(frozen=True)
class PeftSettings:
    """How layers are fine-tuned.

    Parameters
    ----------
    method : str
        One of :data:`PEFT_METHODS`.
    rank, alpha, dropout : int, int, float
        LoRA rank, scaling numerator and dropout.
    target_modules : tuple[str, ...]
        Names of the linear modules inside a layer that get LoRA or IA3 (ViLT: ``query``, ``key``,
        ``value``, ``dense``).
    adapter_reduction : int
        Bottleneck adapter reduction factor (width / bottleneck width).
    prompt_length : int
        Deep prompt vectors per layer.
    """

    method: str = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value", "dense")
    adapter_reduction: int = 16
    prompt_length: int = 10


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
