"""How layers are fine-tuned (``peft.*`` of the run config), in a module of its own.

Both :mod:`f3ocus_core.peft_units` and the modes of :mod:`f3ocus_core.peft_modes` read these
settings; keeping them here lets the units build on the modes without the modes importing the units.
"""

from __future__ import annotations

from dataclasses import dataclass


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
