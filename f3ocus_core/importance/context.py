"""The scoring context: what a scorer may read, and the model state scoring needs (given back as it was).

Scoring must (a) differentiate with respect to each layer's own weights even when they are frozen
(PEFT sets ``requires_grad=False`` on base weights, and a fresh LoRA adapter's ``B = 0`` makes adapter
gradients useless), (b) run without dropout, and (c) leave no trace: the same ``requires_grad`` flags,
the same train/eval mode of every module, no ``.grad`` created (scorers use ``torch.autograd.grad``,
never ``.backward()``), and weights that scorers modify (SynFlow) restored bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from f3ocus_core.layers import LayerMap

NamedParams = list[tuple[str, torch.nn.Parameter]]


@dataclass(frozen=True)
class ScoringContext:
    """Everything a scorer may read: the model (already in scoring state), the batch, the layers.

    ``seed`` is the run's seed for this round (shared by all clients: the ``"projection"``
    reduction's P); ``client_seed`` tells clients apart, so that random scorers (FD) draw per client
    and round from the pair ``(seed, client_seed)``.
    """

    model: torch.nn.Module
    batch: dict[str, torch.Tensor]
    layer_map: LayerMap
    layer_params: list[NamedParams]
    reduction: str
    projection_dim: int
    seed: int
    client_seed: int = 0

    @property
    def batch_size(self) -> int:
        """Number of examples ``n`` in the batch."""
        return int(self.batch["labels"].shape[0])

    def all_params(self) -> list[torch.nn.Parameter]:
        """The own parameters of every layer, layer by layer, as one flat list."""
        return [param for params in self.layer_params for _, param in params]


@contextmanager
def scoring_state(model: torch.nn.Module, layer_params: list[NamedParams]) -> Iterator[None]:
    """Eval mode, gradients on for the layers' own weights, autograd enabled; restore on exit."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    grads_before = {id(param): param.grad for param in model.parameters()}
    try:
        model.eval()
        for params in layer_params:
            for _, param in params:
                param.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in flags:
            param.requires_grad_(flag)
        for param in model.parameters():
            if param.grad is not grads_before.get(id(param)):
                param.grad = grads_before.get(id(param))


@contextmanager
def restored_weights(model: torch.nn.Module) -> Iterator[None]:
    """Let the body change parameter values in place; copy the originals back bit for bit on exit."""
    saved = [(param, param.detach().clone()) for param in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)
