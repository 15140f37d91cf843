"""Every PEFT mode as per-layer units: a federated round, exact LNTK, save and reload, bad input,
and the per-client accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import MessageType

from f3ocus_core.accounting import trainable_parameters, training_step_gflop
from f3ocus_core.errors import ConfigError
from f3ocus_core.importance import score_layers
from f3ocus_core.importance.context import ScoringContext, scoring_state
from f3ocus_core.importance.lntk import lntk_scores
from f3ocus_core.importance.outputs import reduced_outputs
from f3ocus_core.layers import LayerMap, layer_map_for
from f3ocus_core.models import logits_of, random_batch, tiny_vilt
from f3ocus_core.peft_modes import PEFT_METHODS
from f3ocus_core.peft_units import (
    PeftSettings,
    attach_units,
    head_names,
    load_adapter,
    save_adapter,
    set_trainable,
    unit_map,
)
from tests.inprocess_grid import run_server_app

LAYER = 1


def prepared(method: str, seed: int = 3):
    """A tiny ViLT with ``method``'s units, the units moved off their start (so they act)."""
    model = tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1)
    layer_map = layer_map_for(model)
    torch.manual_seed(seed)
    model = attach_units(model, layer_map, PeftSettings(method=method, rank=2, prompt_length=3))
    units = unit_map(model, layer_map, method)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in units.all_keys():
            params[name].add_(0.05 * torch.randn_like(params[name]))
    return model.eval(), layer_map, units


def dense_eigenvalue(model, batch, params, seed: int = 4) -> float:
    """λ_1 of J Jᵀ with J the dense Jacobian of the "head" outputs w.r.t. ``params``, one row at a time."""
    for param in params:
        param.requires_grad_(True)
    outputs = reduced_outputs(model, batch, "head", 2, seed).reshape(-1)
    rows = [torch.autograd.grad(out, params, retain_graph=True, materialize_grads=True) for out in outputs]
    jacobian = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows]).double()
    return torch.linalg.eigvalsh(jacobian @ jacobian.T)[-1].item()


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_every_layer_has_its_own_units_and_only_they_and_the_head_train(method):
    model, layer_map, units = prepared(method)
    assert len(units.names) == len(layer_map) and all(units.names)
    for layer, names in enumerate(units.names):
        assert all(layer_map.layer_index(name) == layer for name in names)
    trainable = set(set_trainable(model, units, [LAYER]))
    assert trainable == set(units.keys_of([LAYER])) | set(head_names(model))


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_lntk_is_exact_against_a_dense_jacobian_on_each_modes_model_and_units(method):
    model, layer_map, units = prepared(method)
    batch = random_batch(model.config if hasattr(model, "vilt") else model.get_base_model().config, n=2, seq_len=5)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    scores = score_layers(model, batch, layer_map, "lntk", "head", 2, seed=4)
    assert all(p.requires_grad == flags[id(p)] for p in model.parameters())
    own = [p for _, p in layer_map.own_parameters(model)[LAYER]]
    assert scores.raw[LAYER] == pytest.approx(dense_eigenvalue(model, batch, own), rel=1e-4)
    # The same Gram machinery on the units themselves (a layer's LNTK over its PEFT parameters).
    params = dict(model.named_parameters())
    unit_params = [[(name, params[name]) for name in names] for names in units.names]
    ctx = ScoringContext(model, batch, layer_map, unit_params, "head", 2, 4)
    with scoring_state(model, unit_params):
        on_units = lntk_scores(ctx)
    reference = dense_eigenvalue(model, batch, [p for _, p in unit_params[LAYER]])
    assert reference > 0 and on_units[LAYER] == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_the_saved_result_reloads_and_reproduces_the_logits(method, tmp_path):
    model, _, units = prepared(method)
    batch = random_batch(tiny_vilt(num_labels=5, num_hidden_layers=3).config, n=2, seq_len=5)
    expected = logits_of(model, batch)
    save_adapter(model, tmp_path / "out", PeftSettings(method=method, rank=2, prompt_length=3), units)
    if method == "full":
        from transformers import ViltForQuestionAnswering

        reloaded = ViltForQuestionAnswering.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    else:
        reloaded = load_adapter(tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1), tmp_path / "out")
        assert (
            tmp_path / "out" / ("adapter_config.json" if method in ("lora", "ia3", "layernorm") else "f3ocus_peft.json")
        ).exists()
    torch.testing.assert_close(logits_of(reloaded, batch), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(
        logits_of(tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1), batch), expected, atol=1e-5
    )


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_every_mode_completes_a_federated_round_with_its_accounting(method, small_run_config, no_figures):
    config = dict(
        small_run_config,
        **{
            "peft.method": method,
            "num-server-rounds": 1,
            "selection.budget": "1",
            "data.max-train-per-client": 8,
            "data.max-test-per-client": 4,
            "train.max-steps": 1,
            "scoring.batch-size": 2,
            "eval.batch-size": 8,
            "selection.algorithm": "exact",
            "run-name": f"run-{method}",
        },
    )
    changed: list[bool] = []

    def spy(train):
        def wrapped(msg, context):
            reply = train(msg, context)
            sent, back = msg.content.array_records["arrays"], reply.content.array_records["arrays"]
            assert set(back.keys()) == set(sent.keys())
            changed.append(any(not np.array_equal(sent[k].numpy(), back[k].numpy()) for k in sent))
            return reply

        return wrapped

    _, rows = run_server_app(config, num_nodes=2, wrap={MessageType.TRAIN: spy})
    assert changed == [True, True]  # each client's units moved in training
    row = rows[1]
    assert set(row["trainable_params"]) == set(row["train_gflop"]) == set(row["bytes_up"]) and row["bytes_up"]
    assert all(value > 0 for value in row["trainable_params"].values())
    assert all(value > 0 for value in row["train_gflop"].values())
    assert row["bytes_down"]["train"] and rows[0]["trainable_params"] == {}


def test_gflop_count_follows_what_trains():
    model, layer_map, units = prepared("adapter")
    batch = random_batch(model.config, n=2, seq_len=5)
    set_trainable(model, units, [0])
    low = training_step_gflop(model, batch)
    set_trainable(model, units, [2])
    high = training_step_gflop(model, batch)
    assert low > high > 0  # backprop to layer 0 costs more than to layer 2
    assert trainable_parameters(model) == sum(
        p.numel() for n, p in model.named_parameters() if n in set(units.keys_of([2])) | set(head_names(model))
    )


def test_a_target_module_that_no_layer_has_stops_with_the_key_and_what_works():
    model = tiny_vilt()
    for method in ("lora", "ia3"):
        with pytest.raises(ConfigError, match=r"peft.target-modules: .*no_such.*query.*value"):
            attach_units(model, layer_map_for(model), PeftSettings(method=method, target_modules=("no_such",)))


def test_a_target_module_missing_from_one_layer_names_that_layer():
    model = tiny_vilt()
    block = model.vilt.encoder.layer[2].attention.attention
    block.extra = torch.nn.Linear(64, 64)
    model.vilt.encoder.layer[0].attention.attention.extra = torch.nn.Linear(64, 64)
    with pytest.raises(
        ConfigError,
        match=r"peft.target-modules: 'extra' matches no linear module in layer\(s\) "
        r"\['layer.1', 'layer.3'\]",
    ):
        attach_units(model, layer_map_for(model), PeftSettings(method="lora", target_modules=("extra",)))


def test_a_mode_the_family_cannot_take_stops_with_the_key_and_what_works():
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=50,
    )
    model = LlamaModel(config)
    layer_map = LayerMap(("layer.0", "layer.1"), (("layer", r"(?:^|\.)layers\.(\d+)\."),))
    with pytest.raises(ConfigError, match=r"peft.method: 'prompt' cannot take LlamaDecoderLayer.*Use lora, adapter"):
        attach_units(model, layer_map, PeftSettings(method="prompt"))
    no_ffn = LayerMap(("layer.0", "layer.1"), (("layer", r"(?:^|\.)layers\.(\d+)\.self_attn\."),))
    with pytest.raises(ConfigError, match=r"peft.method: 'adapter' needs a feed-forward output"):
        attach_units(LlamaModel(config), no_ffn, PeftSettings(method="adapter"))
    with pytest.raises(ConfigError, match=r"peft.method: 'layernorm' needs a normalisation module"):
        attach_units(LlamaModel(config), no_ffn, PeftSettings(method="layernorm"))


def test_unknown_method_names_the_key():
    with pytest.raises(ConfigError, match=r"peft.method: unknown method 'dora'.*'adapter'"):
        attach_units(tiny_vilt(), layer_map_for(tiny_vilt()), PeftSettings(method="dora"))
    assert np.array_equal(PEFT_METHODS, ("lora", "adapter", "layernorm", "bias", "prompt", "ia3", "full"))


def test_the_metrics_row_names_each_clients_accounting():
    from f3ocus_core.recorder import RoundRecord, metrics_row

    record = RoundRecord(1)
    record.trainable_params, record.train_gflop = {7: 1_000, 9: 2_000}, {7: 0.5, 9: 1.5}
    evaluation = {"accuracy": 0.5, "metric": 0.5, "loss": 1.0, "num-examples": 4}
    row = metrics_row(record, {"a": evaluation, "b": evaluation}, {7: "a", 9: "b"}.get)
    assert row["trainable_params"] == {"a": 1_000, "b": 2_000} and row["train_gflop"] == {"a": 0.5, "b": 1.5}
