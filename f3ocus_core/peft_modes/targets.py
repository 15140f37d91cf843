"""Where a PEFT mode puts its units: per-layer module lookups from the :class:`LayerMap`, shared by
every mode so that any family with a layer map takes every mode its blocks allow.

- :func:`target_regex`: a ``peft`` ``target_modules`` regex for named modules inside every layer;
- :func:`layer_modules`: per layer, its (name, module) pairs; :func:`block_of` the block itself;
- :func:`check_targets`: stop with a :class:`~f3ocus_core.errors.ConfigError` naming
  ``peft.target-modules`` when some layer has no module that the names match.
"""

from __future__ import annotations

import re

import torch

from f3ocus_core.errors import ConfigError
from f3ocus_core.layers import LayerMap

NamedModules = list[tuple[str, torch.nn.Module]]


def target_regex(layer_map: LayerMap, modules: tuple[str, ...]) -> str:
    """A ``peft`` ``target_modules`` regex matching ``modules`` inside every layer of ``layer_map``
    and nowhere else (per tower, so a two-tower model gets units in both towers' blocks only)."""
    blocks = [pattern.removeprefix(r"(?:^|\.)").replace(r"(\d+)", r"\d+") for _, pattern in layer_map.towers]
    names = "|".join(re.escape(m) for m in modules)
    return rf"(?:.*\.)?(?:{'|'.join(blocks)})(?:.*\.)?(?:{names})"


def layer_modules(model: torch.nn.Module, layer_map: LayerMap) -> list[NamedModules]:
    """Per layer, the (name, module) pairs of the modules inside it, the block itself first."""
    per_layer: list[NamedModules] = [[] for _ in layer_map.names]
    for name, module in model.named_modules():
        layer = layer_map.layer_index(name + ".") if name else None
        if layer is not None:
            per_layer[layer].append((name, module))
    for layer, modules in enumerate(per_layer):
        if not modules:
            raise ValueError(f"Layer {layer_map.names[layer]!r} has no modules in this model.")
        modules.sort(key=lambda item: len(item[0]))
    return per_layer


def block_of(modules: NamedModules) -> tuple[str, torch.nn.Module]:
    """The layer's block: the shortest-named module of :func:`layer_modules`' list for that layer."""
    return modules[0]


def linear_names(model: torch.nn.Module, layer_map: LayerMap) -> list[str]:
    """The last name part of every ``nn.Linear`` inside the layers: what ``peft.target-modules`` can name."""
    return sorted(
        {
            name.rpartition(".")[2]
            for modules in layer_modules(model, layer_map)
            for name, module in modules
            if isinstance(module, torch.nn.Linear)
        }
    )


def check_targets(
    model: torch.nn.Module, layer_map: LayerMap, modules: tuple[str, ...]
) -> list[list[tuple[str, torch.nn.Linear]]]:
    """Per layer, the ``nn.Linear`` modules ``modules`` names (as :func:`target_regex` matches them).

    Raises
    ------
    ConfigError
        Naming ``peft.target-modules``, the first layers without a match and the names that would work.
    """
    pattern = re.compile(target_regex(layer_map, modules))
    matched = [
        [(name, module) for name, module in layer if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)]
        for layer in layer_modules(model, layer_map)
    ]
    empty = [layer_map.names[i] for i, found in enumerate(matched) if not found]
    if empty:
        raise ConfigError(
            f"peft.target-modules: {','.join(modules)!r} matches no linear module in layer(s) {empty[:4]}"
            f"{' ...' if len(empty) > 4 else ''}; linear modules inside the layers: "
            f"{','.join(linear_names(model, layer_map))}."
        )
    return matched
