"""The paper's PEFT table (PAPER.md, "PEFT table") for the tiny and a small 12-layer ViLT, and for the
tiny LLaVA (the built-in base ``builtin:tiny-llava-easyvqa``'s configuration, one generative family).

Per PEFT mode with units in every layer, and for F3OCUS assigning each client b = round(L/3) of the
L layers (4 of 12, as the paper) of adapters and of LoRA:

- ``Mbit``: what one client sends per round as the paper counts it, trainable units x 32 bit / 1e6
  (the personal answer head stays on the client and is not counted);
- ``GFLOP``: one training step on one example (forward, loss, backward to the trainable units and
  the head), counted by ``torch.utils.flop_counter.FlopCounterMode``
  (:func:`f3ocus_core.accounting.training_step_gflop`; 2 FLOPs per multiply-add, matrix products
  only); for the F3OCUS rows the mean over 8 seeded random choices of the b layers, since the
  backward pass reaches down to the lowest trained layer. LLaVA scores an example's 13 easy-vqa
  answers by teacher forcing, so its language model runs on 13 sequences per example;
- ``params (M)``: the trainable units, in millions.

Default unit settings of the run (``peft.*``): LoRA rank 8 and IA3 on the family's own targets
(ViLT: query, value, dense; LLaVA: q_proj, v_proj); adapters with reduction 16; 10 deep prompt
vectors per layer. A mode the model's layers cannot take (LLaVA: bias, prompt) gets a row saying so.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_peft.py`` (about a minute on
one core).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from f3ocus_core.accounting import training_step_gflop
from f3ocus_core.data import easy_vqa
from f3ocus_core.errors import ConfigError
from f3ocus_core.families import FAMILIES, family_of
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import random_batch, tiny_vilt
from f3ocus_core.peft_units import PeftSettings, attach_units, set_trainable, unit_map
from f3ocus_core.training import make_collate

MODES = (
    ("full fine-tuning", "full"),
    ("adapters, all layers", "adapter"),
    ("LoRA", "lora"),
    ("LayerNorm tuning", "layernorm"),
    ("bias tuning (BitFit)", "bias"),
    ("deep prompts", "prompt"),
    ("IA3", "ia3"),
)
F3OCUS_ROWS = (("adapter", "adapter layers"), ("lora", "LoRA layers"))
SAMPLES = 8
#: A fresh model and a one-example batch for it.
Build = Callable[[], tuple[torch.nn.Module, dict[str, torch.Tensor]]]


def vilt(**overrides: object) -> Build:
    """A tiny ViLT with ``overrides`` (random weights: counts do not depend on them) and a random batch."""
    return lambda: (tiny_vilt(seed=0, **overrides), random_batch(tiny_vilt(**overrides).config, n=1, seq_len=12))


def tiny_generative(name: str) -> Build:
    """The built-in tiny base of family ``name`` (its configuration, random weights) and one easy-vqa
    example with the 13 easy-vqa answers as the answer set."""
    family = FAMILIES[name]
    pool = easy_vqa.base_pool(0)
    processor = family.build_processor(pool["question"], easy_vqa.ANSWERS)

    def build() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = family.model_class(family.tiny_config(processor, easy_vqa.ANSWERS)).eval()
        return model, make_collate(processor, easy_vqa.ANSWERS)([pool[0]])

    return build


MODELS: dict[str, Build] = {
    "tiny ViLT (the built-in base: 4 layers, hidden 64, 64 px images)": vilt(),
    "small ViLT (12 layers, hidden 256, 4 heads, FFN 1024, 128 px images in 16 px patches)": vilt(
        hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024, image_size=128
    ),
    "tiny LLaVA (the built-in base: CLIP 2 + Llama 2 layers, hidden 32, 32 px images)": tiny_generative("llava"),
}


def measure(build: Build, method: str, layer_sets: list[list[int]]) -> tuple[float, float]:
    """(mean training-step GFLOP over ``layer_sets``, trainable unit parameters of the first set)."""
    model, batch = build()
    layer_map = layer_map_for(model)
    settings = PeftSettings(method=method, target_modules=family_of(model).lora_targets)
    model = attach_units(model, layer_map, settings)
    units = unit_map(model, layer_map, method)
    params = dict(model.named_parameters())
    gflop = []
    for layers in layer_sets:
        set_trainable(model, units, layers, head=True)
        gflop.append(training_step_gflop(model, batch))
    count = sum(params[name].numel() for name in units.keys_of(layer_sets[0]))
    return float(np.mean(gflop)), count


def table(name: str, build: Build) -> list[str]:
    num_layers = len(layer_map_for(build()[0]))
    budget = max(1, round(num_layers / 3))
    rng = np.random.default_rng(0)
    chosen = [sorted(rng.choice(num_layers, budget, replace=False).tolist()) for _ in range(SAMPLES)]
    rows = [f"{name}, L = {num_layers}:", "", "| method | Mbit | GFLOP | params (M) |", "|---|---|---|---|"]
    everything = [list(range(num_layers))]
    for label, method in MODES:
        try:
            gflop, count = measure(build, method, everything)
        except ConfigError as error:
            reason = str(error).split(": ", 1)[1].split(". Use")[0].split(";")[0]
            rows.append(f"| {label} | cannot: {reason} | - | - |")
            continue
        rows.append(f"| {label} | {count * 32 / 1e6:.4f} | {gflop:.4f} | {count / 1e6:.4f} |")
    for method, label in F3OCUS_ROWS:
        gflop, count = measure(build, method, chosen)
        rows.append(
            f"| F3OCUS, {budget} of {num_layers} {label} | {count * 32 / 1e6:.4f} | {gflop:.4f} | {count / 1e6:.4f} |"
        )
    return rows


def main() -> None:
    torch.set_num_threads(1)
    for name, build in MODELS.items():
        print("\n".join(table(name, build)), end="\n\n")


if __name__ == "__main__":
    main()
