"""What local training costs a client, as the paper reports it: trainable parameters and training
FLOPs.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions, 2 FLOPs per multiply-add; elementwise operations and the optimizer are not counted) on
one training step, forward, loss and backward to the trainable parameters, and scaled by the number
of steps. The backward pass only reaches the layers below the lowest trainable one, so training
deep layers only (or small units) is cheaper, which is what the count shows.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from f3ocus_core.models import logits_of, loss_of


def trainable_parameters(model: torch.nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad``."""
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def training_step_gflop(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """GFLOP of one training step on ``batch``: forward, loss and the gradients of the trainable
    parameters (no ``.grad`` is written, the RNG and the weights are left as they were).

    Raises
    ------
    ValueError
        If nothing is trainable.
    """
    params = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise ValueError("No trainable parameters: a training step would compute nothing.")
    devices = sorted({param.device for param in params if param.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
        loss = loss_of(logits_of(model, batch), batch)
        torch.autograd.grad(loss, params, allow_unused=True)
    return counter.get_total_flops() / 1e9
