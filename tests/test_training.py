"""Local training and evaluation on every available device and precision: the model trains there,
weights stay float32 (so layer scoring stays exact), and what travels is float32 on the CPU."""

import datasets
import numpy as np
import pytest
import torch

from f3ocus_core.devices import PRECISIONS
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import random_batch, tiny_vilt
from f3ocus_core.peft_units import PeftSettings, attach_units, get_state, head_names, set_trainable, unit_map
from f3ocus_core.training import TrainSettings, evaluate, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _setup(layers=(1, 2)):
    torch.manual_seed(0)
    model = attach_units(tiny_vilt(), layer_map_for(tiny_vilt()), PeftSettings(rank=4))
    units = unit_map(model, layer_map_for(tiny_vilt()), "lora")
    set_trainable(model, units, list(layers))
    batch = random_batch(model.get_base_model().config, n=8)
    dataset = datasets.Dataset.from_list([dict(index=i) for i in range(8)])

    def collate(rows):
        idx = [row["index"] for row in rows]
        return {key: value[idx] for key, value in batch.items()}

    return model, units, dataset, collate


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_training_step_on_each_device_and_precision(device, precision):
    model, units, dataset, collate = _setup()
    names = units.keys_of([1, 2]) + head_names(model)
    before = get_state(model, names)
    # fp16's GradScaler starts at 2**16 and skips the first steps that overflow (2 on this model),
    # so train for 6 steps.
    result = train(
        model, dataset, collate, TrainSettings(epochs=3, lr=1e-2, batch_size=4, precision=precision), device=device
    )
    assert result["steps"] == 6 and np.isfinite(result["loss"])
    assert all(p.device.type == device for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast never changes weights
    after = get_state(model, names)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in after.values())
    assert all(not np.array_equal(before[n], after[n]) for n in names if "lora_B" in n)
    metrics = evaluate(model, dataset, collate, "vqa", batch_size=4, precision=precision)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])


def test_bf16_is_really_applied_and_close_to_fp32():
    results = {}
    for name in ("fp32", "bf16"):
        model, units, dataset, collate = _setup()
        train(model, dataset, collate, TrainSettings(epochs=1, lr=1e-3, batch_size=8, precision=name), device="cpu")
        results[name] = get_state(model, units.keys_of([1]))
    key = next(k for k in results["fp32"] if "lora_B" in k)
    full, half = results["fp32"][key], results["bf16"][key]
    assert not np.array_equal(full, half)  # the forward pass did run in half precision
    assert np.linalg.norm(full - half) <= 0.2 * np.linalg.norm(full)


def test_state_travels_as_float32_cpu_even_from_a_half_precision_model():
    model, units, _, _ = _setup()
    model.to(torch.bfloat16)
    state = get_state(model, units.keys_of([0]))
    assert all(v.dtype == np.float32 for v in state.values())


def test_unknown_precision_is_refused_before_training():
    model, _, dataset, collate = _setup()
    with pytest.raises(ValueError, match="^train.precision"):
        train(model, dataset, collate, TrainSettings(precision="fp8"))
