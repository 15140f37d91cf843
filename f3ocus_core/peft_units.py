"""The trainable units of each layer, and making only the assigned layers' units trainable.

F3OCUS assigns different layers to different clients every round, so the global model carries a
unit in *every* layer and each client trains only those of its assigned layers (plus its personal
answer head); everything else stays frozen and is not sent back.

Methods:

- ``lora``: LoRA adapters (via ``peft``) on the ``target_modules`` of every layer; a layer's units
  are its ``lora_A``/``lora_B`` matrices.
- ``full``: no adapter; a layer's units are all of its own weights (whole-layer fine-tuning).

The federated state is a flat ``{parameter name: array}`` dict of every layer's units;
:class:`UnitMap` says which names belong to which layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from f3ocus_core.layers import LayerMap, is_peft_parameter

PEFT_METHODS = ("lora", "full")
#: Parameter-name prefixes of the personal answer head (ViLT's ``classifier``), PEFT-wrapped or not.
HEAD_MARKERS = ("classifier.",)


@dataclass(frozen=True)
class PeftSettings:
    """How layers are fine-tuned.

    Parameters
    ----------
    method : {"lora", "full"}
        LoRA units in every layer, or whole layers.
    rank, alpha, dropout : int, int, float
        LoRA rank, scaling numerator and dropout.
    target_modules : tuple[str, ...]
        Names of the linear modules inside a layer that get LoRA (ViLT: ``query``, ``key``, ``value``,
        ``dense``).
    """

    method: str = "lora"
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value", "dense")


def target_regex(layer_map: LayerMap, modules: tuple[str, ...]) -> str:
    """A ``peft`` ``target_modules`` regex matching ``modules`` inside every layer of ``layer_map``
    and nowhere else (per tower, so a two-tower model gets adapters in both towers' blocks only)."""
    blocks = [pattern.removeprefix(r"(?:^|\.)").replace(r"(\d+)", r"\d+") for _, pattern in layer_map.towers]
    names = "|".join(modules)
    return rf"(?:.*\.)?(?:{'|'.join(blocks)})(?:.*\.)?(?:{names})"


def attach_units(model: torch.nn.Module, layer_map: LayerMap, settings: PeftSettings) -> torch.nn.Module:
    """Return ``model`` ready for F3OCUS: LoRA-wrapped (``lora``) or as is (``full``), all frozen."""
    if settings.method not in PEFT_METHODS:
        raise ValueError(f"peft.method: unknown method {settings.method!r}; choose one of {PEFT_METHODS}.")
    if settings.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=target_regex(layer_map, settings.target_modules),
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as error:
            raise ValueError(f"peft.target-modules: {error}") from error
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
    per_layer: list[list[str]] = [[] for _ in layer_map.names]
    for name, _ in model.named_parameters():
        layer = layer_map.layer_index(name)
        if layer is None:
            continue
        if (method == "lora" and "lora_" in name) or (method == "full" and not is_peft_parameter(name)):
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
