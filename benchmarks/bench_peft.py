"""The paper's PEFT table (PAPER.md, "PEFT table") for the tiny ViLT and a small 12-layer ViLT.

Per PEFT mode with units in every layer, and for F3OCUS assigning each client b = round(L/3) of the
L layers (4 of 12, as the paper) of adapters and of LoRA:

- ``Mbit``: what one client sends per round as the paper counts it, trainable units x 32 bit / 1e6
  (the personal answer head stays on the client and is not counted);
- ``GFLOP``: one training step on one example (forward, loss, backward to the trainable units and
  the head), counted by ``torch.utils.flop_counter.FlopCounterMode``
  (:func:`f3ocus_core.accounting.training_step_gflop`; 2 FLOPs per multiply-add, matrix products
  only); for the F3OCUS rows the mean over 8 seeded random choices of the b layers, since the
  backward pass reaches down to the lowest trained layer;
- ``params (M)``: the trainable units, in millions.

Default unit settings of the run (``peft.*``): LoRA rank 8 on query, value, dense; adapters with
reduction 16; 10 deep prompt vectors per layer; IA3 on query, value, dense.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_peft.py`` (under a minute on one core).
"""

from __future__ import annotations

import numpy as np
import torch

from f3ocus_core.accounting import training_step_gflop
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import random_batch, tiny_vilt
from f3ocus_core.peft_units import PeftSettings, attach_units, set_trainable, unit_map

MODES = (("full fine-tuning", "full"), ("adapters, all layers", "adapter"), ("LoRA", "lora"),
         ("LayerNorm tuning", "layernorm"), ("bias tuning (BitFit)", "bias"), ("deep prompts", "prompt"),
         ("IA3", "ia3"))
F3OCUS_ROWS = (("adapter", "adapter layers"), ("lora", "LoRA layers"))
SAMPLES = 8

MODELS = {
    "tiny ViLT (the built-in base: 4 layers, hidden 64, 64 px images)": {},
    "small ViLT (12 layers, hidden 256, 4 heads, FFN 1024, 128 px images in 16 px patches)": dict(
        hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024, image_size=128),
}


def measure(overrides: dict, method: str, layer_sets: list[list[int]]) -> tuple[float, float]:
    """(mean training-step GFLOP over ``layer_sets``, trainable unit parameters of the first set)."""
    model = tiny_vilt(seed=0, **overrides)
    layer_map = layer_map_for(model)
    model = attach_units(model, layer_map, PeftSettings(method=method))
    units = unit_map(model, layer_map, method)
    params = dict(model.named_parameters())
    batch = random_batch(tiny_vilt(**overrides).config, n=1, seq_len=12)
    gflop = []
    for layers in layer_sets:
        set_trainable(model, units, layers, head=True)
        gflop.append(training_step_gflop(model, batch))
    count = sum(params[name].numel() for name in units.keys_of(layer_sets[0]))
    return float(np.mean(gflop)), count


def table(name: str, overrides: dict) -> list[str]:
    num_layers = len(layer_map_for(tiny_vilt(**overrides)))
    budget = max(1, round(num_layers / 3))
    rng = np.random.default_rng(0)
    chosen = [sorted(rng.choice(num_layers, budget, replace=False).tolist()) for _ in range(SAMPLES)]
    rows = [f"{name}, L = {num_layers}:", "", "| method | Mbit | GFLOP | params (M) |", "|---|---|---|---|"]
    everything = [list(range(num_layers))]
    for label, method in MODES:
        gflop, count = measure(overrides, method, everything)
        rows.append(f"| {label} | {count * 32 / 1e6:.4f} | {gflop:.4f} | {count / 1e6:.4f} |")
    for method, label in F3OCUS_ROWS:
        gflop, count = measure(overrides, method, chosen)
        rows.append(f"| F3OCUS, {budget} of {num_layers} {label} | {count * 32 / 1e6:.4f} | {gflop:.4f} | "
                    f"{count / 1e6:.4f} |")
    return rows


def main() -> None:
    torch.set_num_threads(1)
    for name, overrides in MODELS.items():
        print("\n".join(table(name, overrides)), end="\n\n")


if __name__ == "__main__":
    main()
