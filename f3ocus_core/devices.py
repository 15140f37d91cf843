"""Where a node computes and in what precision: the ``device`` and ``train.precision`` keys.

A hospital node with a GPU should train on it. ``device`` is a run-config default (``auto``) that a
SuperNode overrides with ``--node-config "device=cuda:1"``; :func:`resolve_device` turns the pair
into a :class:`torch.device` and refuses, naming the key, a device this node does not have.

``train.precision`` chooses mixed precision for local training: ``fp32`` (none), ``bf16`` or
``fp16`` through :func:`torch.autocast`, with a :class:`torch.amp.GradScaler` for ``fp16`` (whose
small exponent range would otherwise underflow gradients). Autocast runs selected operations in
half precision but leaves the weights, the optimizer state and everything sent to the server in
float32, so layer scoring (which runs outside training) stays exact in float32. CPU autocast
supports both ``bf16`` and ``fp16`` in the torch versions this project pins (checked by the tests);
``bf16`` on a GPU needs one that supports it (Ampere or newer).
"""

from __future__ import annotations

import contextlib
import re

import torch

#: The values of ``train.precision``.
PRECISIONS = ("fp32", "bf16", "fp16")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(value: str) -> str:
    """``value`` stripped and lower-cased if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Only the spelling is checked: whether the device exists is a property of the node, checked by
    :func:`resolve_device` where the model runs.

    Raises
    ------
    ValueError
        Naming ``device`` for any other value.
    """
    name = str(value).strip().lower()
    if not _DEVICE_PATTERN.match(name):
        raise ValueError(
            f"device: unknown device {value!r}; choose auto, cpu, cuda or cuda:N "
            '(per node: --node-config "device=cuda:0").'
        )
    return name


def resolve_device(node_value: str | None, run_default: str) -> torch.device:
    """The device this node computes on: the node's ``device`` if given, else the run's default.

    ``auto`` is the first CUDA device when CUDA is available, else the CPU.

    Raises
    ------
    ValueError
        Naming ``device`` when the value is unknown or names a GPU this node does not have.
    """
    name = check_device_name(run_default if node_value is None or str(node_value).strip() == "" else node_value)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= count:
            raise ValueError(
                f"device: {name!r} is not available on this node ({count} CUDA device(s) visible); "
                'use --node-config "device=cpu" or "device=auto".'
            )
        return torch.device("cuda", index)
    return device


def check_precision(device: torch.device, precision: str) -> None:
    """Raise ``ValueError`` naming ``train.precision`` unless ``precision`` can run on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: unknown value {precision!r}; choose one of {list(PRECISIONS)}.")
    if precision == "fp32":
        return
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"train.precision: {precision} autocast is not available on {device}; use fp32.")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision: {device} does not support bf16; use fp16 or fp32.")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (no-op for ``fp32``)."""
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_HALF[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``fp16`` on ``device``; ``None`` for the other precisions."""
    check_precision(device, precision)
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` with every tensor on ``device``."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    return next((param.device for param in model.parameters()), torch.device("cpu"))
