"""Only the assigned layers' LoRA units are trainable, change in training, and are what is sent."""

import datasets
import numpy as np
import pytest

from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import random_batch, tiny_vilt
from f3ocus_core.peft_units import PeftSettings, attach_units, get_state, head_names, set_state, set_trainable, unit_map
from f3ocus_core.training import TrainSettings, train


@pytest.fixture()
def lora_model():
    model = tiny_vilt()
    layer_map = layer_map_for(model)
    model = attach_units(model, layer_map, PeftSettings(rank=4))
    return model, layer_map, unit_map(model, layer_map, "lora")


def test_every_layer_has_lora_units_and_nothing_else_does(lora_model):
    model, layer_map, units = lora_model
    assert len(units.names) == len(layer_map) == 4
    for layer, names in enumerate(units.names):
        assert names and all("lora_" in n and f"layer.{layer}." in n for n in names)
    lora_everywhere = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert lora_everywhere == set(units.all_keys())


def test_only_assigned_layers_and_head_are_trainable(lora_model):
    model, _, units = lora_model
    trainable = set(set_trainable(model, units, [1, 3]))
    assert trainable == set(units.keys_of([1, 3])) | set(head_names(model))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


def test_training_changes_exactly_the_assigned_units(lora_model):
    model, _, units = lora_model
    set_trainable(model, units, [2])
    before = get_state(model, [n for n, _ in model.named_parameters()])
    batch = random_batch(model.get_base_model().config, n=8)
    data = [dict(index=i) for i in range(8)]

    def collate(rows):
        idx = [row["index"] for row in rows]
        return {key: value[idx] for key, value in batch.items()}

    train(model, datasets.Dataset.from_list(data), collate, TrainSettings(epochs=3, lr=1e-2, batch_size=4))
    after = get_state(model, list(before))
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    lora_b_of_layer_2 = {n for n in units.keys_of([2]) if "lora_B" in n}
    assert lora_b_of_layer_2 <= changed  # B starts at zero and must move
    assert changed <= set(units.keys_of([2])) | set(head_names(model))
    assert not changed & set(units.keys_of([0, 1, 3]))


def test_set_state_refuses_unknown_names_and_shapes(lora_model):
    model, _, units = lora_model
    key = units.names[0][0]
    with pytest.raises(ValueError, match="does not have"):
        set_state(model, {"nope": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        set_state(model, {key: np.zeros((1, 1), np.float32)})


def test_full_method_units_are_the_layers_own_weights():
    model = tiny_vilt()
    layer_map = layer_map_for(model)
    model = attach_units(model, layer_map, PeftSettings(method="full"))
    units = unit_map(model, layer_map, "full")
    assert set(units.names[0]) == {n for n, _ in layer_map.own_parameters(model)[0]}


def test_unknown_target_module_names_the_key():
    model = tiny_vilt()
    with pytest.raises(ValueError, match="peft.target-modules"):
        attach_units(model, layer_map_for(model), PeftSettings(target_modules=("no_such_module",)))
