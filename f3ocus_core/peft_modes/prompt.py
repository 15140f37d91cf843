"""``prompt``: deep prompt tuning (VPT-deep, Jia et al., 2022; the learnable context of PromptFL,
Guo et al., 2023, put in every layer): ``peft.prompt-length`` learnable vectors prepended to the
hidden states at the input of every layer and dropped at its output; a layer's units are its
vectors (``prompt_tokens``).

Every layer sees its own fresh prompts, which is VPT-deep exactly (there, layer l's outputs at the
prompt positions are replaced by layer l+1's prompts). The layer's attention mask gains ``p``
"attend" entries. Works for any block called as ``block(hidden_states, attention_mask=..., ...)``;
blocks that take token positions (rotary position embeddings, caches: decoder LMs) cannot take
prompts this way and are refused (:func:`unfit`) before anything is attached. ``peft``'s prompt
tuning only prepends at the input of a language model, so the result is saved in this package's
own format.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from f3ocus_core.layers import LayerMap
from f3ocus_core.peft_modes.targets import block_of, layer_modules

if TYPE_CHECKING:
    from f3ocus_core.peft_settings import PeftSettings

PEFT_FORMAT = False
PARAMETER = "prompt_tokens"
#: Block arguments that tie tokens to positions; a block taking one of them cannot take prompts.
POSITIONAL = (
    "position_ids",
    "position_embeddings",
    "cache_position",
    "past_key_value",
    "past_key_values",
    "rotary_pos_emb",
)
MASK = "attention_mask"


def _pad_mask(mask: torch.Tensor, tokens: int, prompts: int) -> torch.Tensor:
    """``mask`` over ``tokens`` keys (and queries, when square) with ``prompts`` "attend" entries first."""
    value = 0.0 if mask.is_floating_point() else 1
    pad = (prompts, 0, prompts, 0) if mask.dim() >= 2 and mask.shape[-2] == tokens > 1 else (prompts, 0)
    return F.pad(mask, pad, value=value)


def _prepend(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: prompts before the hidden states, and the mask widened to match."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    first = next(iter(bound.arguments))
    hidden = bound.arguments[first]
    prompts = getattr(module, PARAMETER)
    n, tokens = hidden.shape[:2]
    bound.arguments[first] = torch.cat([prompts.to(hidden.dtype).expand(n, -1, -1), hidden], dim=1)
    mask = bound.arguments.get(MASK)
    if torch.is_tensor(mask) and mask.shape[-1] == tokens:
        bound.arguments[MASK] = _pad_mask(mask, tokens, prompts.shape[0])
    return bound.args, bound.kwargs


def _strip(module: nn.Module, args: tuple, output: object) -> object:
    """Forward hook: drop the prompt positions from the block's hidden-state output."""
    prompts = getattr(module, PARAMETER).shape[0]
    if torch.is_tensor(output):
        return output[:, prompts:]
    if isinstance(output, tuple) and torch.is_tensor(output[0]):
        return (output[0][:, prompts:], *output[1:])
    raise TypeError(f"{type(module).__name__} returned {type(output).__name__}; deep prompts need a tensor or tuple.")


def _width(block: nn.Module) -> int | None:
    """The hidden size of the block's input: the input width of its first linear module (``None``
    without one)."""
    return next((module.in_features for module in block.modules() if isinstance(module, nn.Linear)), None)


def unfit(model: nn.Module, layer_map: LayerMap, settings: PeftSettings) -> str | None:
    """Why some layer's block cannot take deep prompts (it takes token positions, or has no linear
    module to tell its width from), or ``None``."""
    for layer in layer_modules(model, layer_map):
        _, block = block_of(layer)
        taken = [name for name in inspect.signature(block.forward).parameters if name in POSITIONAL]
        if taken:
            return f"'prompt' cannot take {type(block).__name__} blocks: they take token positions ({', '.join(taken)})"
        if _width(block) is None:
            return f"'prompt' cannot tell the hidden size of {type(block).__name__} (no linear module)"
    return None


def attach(model: nn.Module, layer_map: LayerMap, settings: PeftSettings) -> nn.Module:
    """Give every layer's block ``peft.prompt-length`` learnable vectors and the hooks that use them
    (for a model :func:`unfit` accepts)."""
    for layer in layer_modules(model, layer_map):
        _, block = block_of(layer)
        weight, width = next(block.parameters()), _width(block)
        if width is None:
            raise ValueError(f"peft.method: {unfit(model, layer_map, settings)}; choose another method.")
        prompts = torch.randn(settings.prompt_length, width, device=weight.device) * 0.02
        block.register_parameter(PARAMETER, nn.Parameter(prompts.to(weight.dtype)))
        block.register_forward_pre_hook(_prepend, with_kwargs=True)
        block.register_forward_hook(_strip)
    return model


def is_unit(name: str) -> bool:
    """Whether parameter ``name`` is a layer's prompt vectors."""
    return name.endswith("." + PARAMETER)
