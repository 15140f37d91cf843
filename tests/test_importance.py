"""LNTK layer importance: exactness against a dense Jacobian, the model contract, and bad input."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import peft
import pytest
import torch
from scipy.stats import spearmanr

from f3ocus_core.importance import DEFAULT_PROJECTION_DIM, DEFAULT_REDUCTION, REDUCTIONS, SCORERS, score_layers
from f3ocus_core.importance.context import ScoringContext, scoring_state
from f3ocus_core.importance.gram import linear_form, linear_gram
from f3ocus_core.importance.lntk import lntk_scores
from f3ocus_core.importance.outputs import head_basis, projection_matrix, reduced_outputs
from f3ocus_core.layers import LayerMap, layer_map_for
from f3ocus_core.models import logits_of, loss_of, random_batch, tiny_vilt


def dense_lntk(model, batch, layer_map, reduction, projection_dim, seed):
    """Reference: the full per-layer Jacobian, one autograd call per output row, then eigvalsh."""
    return dense_lntk_of(model, batch, layer_map, lambda m, b: reduced_outputs(m, b, reduction, projection_dim, seed))


def dense_lntk_of(model, batch, layer_map, output_fn):
    """The dense reference over the outputs ``output_fn(model, batch)``."""
    params = layer_map.own_parameters(model)
    for layer in params:
        for _, param in layer:
            param.requires_grad_(True)
    model.eval()
    outputs = output_fn(model, batch).reshape(-1)
    values = []
    for layer in params:
        tensors = [p for _, p in layer]
        jacobian = torch.stack(
            [
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, tensors, retain_graph=True)])
                for out in outputs
            ]
        ).double()
        values.append(torch.linalg.eigvalsh(jacobian @ jacobian.T)[-1].item())
    return np.array(values)


@pytest.fixture(scope="module")
def model():
    return tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1)


@pytest.fixture(scope="module")
def layer_map(model):
    return layer_map_for(model)


@pytest.mark.parametrize(
    ("reduction", "dim"), [("logits", 1), ("projection", 1), ("projection", 3), ("head", 1), ("head", 3)]
)
def test_lntk_matches_dense_jacobian_reference(reduction, dim):
    model = tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1)
    layer_map = layer_map_for(model)
    batch = random_batch(model.config, n=3, seq_len=6, seed=2)
    scores = score_layers(model, batch, layer_map, "lntk", reduction, dim, seed=4)
    reference = dense_lntk(tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1), batch, layer_map, reduction, dim, 4)
    np.testing.assert_allclose(scores.raw, reference, rtol=1e-4)
    np.testing.assert_allclose(scores.normalized, reference / reference.sum(), rtol=1e-4)


def test_fast_grams_match_per_row_gradients(model, layer_map):
    batch = random_batch(model.config, n=4, seq_len=5, seed=3)
    params = layer_map.own_parameters(model)
    ctx = ScoringContext(model, batch, layer_map, params, "logits", 1, 0)
    with scoring_state(model, params):
        fast = lntk_scores(ctx, strategy="auto")
        rows = lntk_scores(ctx, strategy="rows")
    np.testing.assert_allclose(fast, rows, rtol=1e-5)


class ToyBlock(torch.nn.Module):
    """A block with a linear layer used twice, a LayerNorm and a convolution (generic fallback)."""

    def __init__(self, width):
        super().__init__()
        self.shared = torch.nn.Linear(width, width)
        self.norm = torch.nn.LayerNorm(width)
        self.conv = torch.nn.Conv1d(width, width, kernel_size=3, padding=1)

    def forward(self, h):
        h = torch.tanh(self.shared(h)) + h
        h = self.norm(torch.tanh(self.shared(h)))
        return h + self.conv(h.transpose(1, 2)).transpose(1, 2)


class ToyModel(torch.nn.Module):
    """Two ``encoder.layer.k`` blocks and a head; returns an object with ``.logits`` like HF models."""

    def __init__(self, width=6, outputs=3):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Module()
        self.encoder.layer = torch.nn.ModuleList([ToyBlock(width) for _ in range(2)])
        self.head = torch.nn.Linear(width, outputs)

    def forward(self, inputs):
        h = inputs
        for block in self.encoder.layer:
            h = block(h)
        return SimpleNamespace(logits=self.head(h.mean(dim=1)))


def test_shared_modules_and_generic_parameters_match_the_dense_reference():
    model = ToyModel()
    layer_map = LayerMap(names=("layer.0", "layer.1"), towers=(("layer", r"(?:^|\.)encoder\.layer\.(\d+)\."),))
    gen = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randn(4, 5, 6, generator=gen), "labels": torch.zeros(4, 3)}
    scores = score_layers(model, batch, layer_map, reduction="logits")
    reference = dense_lntk(model, batch, layer_map, "logits", 1, 0)
    np.testing.assert_allclose(scores.raw, reference, rtol=1e-4)


@pytest.mark.parametrize("kappa", [1, 3])
def test_both_linear_gram_forms_equal_the_gram_of_explicit_jacobians(kappa):
    gen = torch.Generator().manual_seed(kappa)
    n, tokens, d_in, d_out = 3, 4, 5, 6
    g = torch.randn(n * kappa, tokens, d_out, generator=gen)
    x = torch.randn(n, tokens, d_in, generator=gen)
    per_row_weight = torch.einsum("rtd,rte->rde", g, x.repeat_interleave(kappa, dim=0))
    rows = torch.cat([per_row_weight.reshape(n * kappa, -1), g.sum(dim=1)], dim=1).double()
    expected = rows @ rows.T
    for form in ("rows", "tokens"):
        got = linear_gram(g, x, kappa, {"weight", "bias"}, form=form)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_linear_form_uses_the_token_kernel_for_many_outputs_and_rows_for_one():
    assert linear_form(n=8, kappa=8, tokens=29, d_in=256, d_out=256) == "tokens"
    assert linear_form(n=8, kappa=1, tokens=77, d_in=256, d_out=256) == "rows"


def test_projection_is_seeded_and_scaled():
    a = projection_matrix(2000, 4, seed=5)
    assert torch.equal(a, projection_matrix(2000, 4, seed=5))
    assert not torch.equal(a, projection_matrix(2000, 4, seed=6))
    assert abs(float((a * a).sum(dim=1).mean()) - 1.0) < 0.1


def test_projection_seed_changes_scores_but_not_the_logits_reduction(model, layer_map):
    batch = random_batch(model.config, n=4, seed=0)
    a = score_layers(model, batch, layer_map, reduction="projection", projection_dim=1, seed=0)
    b = score_layers(model, batch, layer_map, reduction="projection", projection_dim=1, seed=1)
    assert not np.allclose(a.raw, b.raw)
    c = score_layers(model, batch, layer_map, reduction="logits", seed=0)
    d = score_layers(model, batch, layer_map, reduction="logits", seed=1)
    np.testing.assert_allclose(c.raw, d.raw, rtol=1e-6)


def test_default_reduction_is_a_valid_probability_vector(model, layer_map):
    scores = score_layers(model, random_batch(model.config, n=4), layer_map)
    assert scores.method == "lntk"
    assert scores.raw.shape == scores.normalized.shape == (len(layer_map),)
    assert np.all(scores.normalized >= 0) and np.isclose(scores.normalized.sum(), 1.0)
    assert DEFAULT_REDUCTION in REDUCTIONS


def test_lntk_changes_with_the_data(model, layer_map):
    a = score_layers(model, random_batch(model.config, n=4, seed=0), layer_map, reduction="logits")
    b = score_layers(model, random_batch(model.config, n=4, seed=1), layer_map, reduction="logits")
    assert not np.allclose(a.raw, b.raw)


def test_lora_wrapped_model_scores_its_own_weights_and_is_left_untouched():
    bare = tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1)
    wrapped = peft.get_peft_model(
        tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1),
        peft.LoraConfig(target_modules=["query", "value"], r=2),
    )
    wrapped.train()
    flags = {name: p.requires_grad for name, p in wrapped.named_parameters()}
    assert not all(flags.values()) and any(flags.values())
    batch = random_batch(bare.config, n=3, seed=7)
    expected = score_layers(bare, batch, layer_map_for(bare), reduction="logits")
    got = score_layers(wrapped, batch, layer_map_for(wrapped), reduction="logits")
    np.testing.assert_allclose(got.raw, expected.raw, rtol=1e-5)
    assert {name: p.requires_grad for name, p in wrapped.named_parameters()} == flags
    assert all(p.grad is None for p in wrapped.parameters())
    assert all(module.training for module in wrapped.modules())


def test_scoring_runs_without_dropout():
    model = tiny_vilt(num_labels=5, num_hidden_layers=2, hidden_dropout_prob=0.5, seed=2)
    layer_map = layer_map_for(model)
    batch = random_batch(model.config, n=3, seed=1)
    evaluated = score_layers(model, batch, layer_map, reduction="logits")
    model.train()
    first = score_layers(model, batch, layer_map, reduction="logits")
    second = score_layers(model, batch, layer_map, reduction="logits")
    np.testing.assert_allclose(first.raw, evaluated.raw, rtol=1e-6)
    np.testing.assert_allclose(second.raw, evaluated.raw, rtol=1e-6)
    assert model.training


def test_existing_gradients_are_kept(model, layer_map):
    param = next(model.parameters())
    param.grad = torch.ones_like(param)
    try:
        score_layers(model, random_batch(model.config, n=2), layer_map)
        assert torch.equal(param.grad, torch.ones_like(param))
        assert all(p.grad is None for p in list(model.parameters())[1:])
    finally:
        param.grad = None


def test_top_is_the_local_selection_of_lntk_alone(model, layer_map):
    scores = score_layers(model, random_batch(model.config, n=4), layer_map, reduction="logits")
    top = scores.top(2)
    assert len(top) == 2
    rest = [i for i in range(len(layer_map)) if i not in top]
    assert min(scores.normalized[top]) >= max(scores.normalized[rest])


def test_empty_batch_is_rejected(model, layer_map):
    batch = random_batch(model.config, n=2)
    empty = {key: value[:0] for key, value in batch.items()}
    with pytest.raises(ValueError, match="empty"):
        score_layers(model, empty, layer_map)


def test_layer_without_parameters_is_named(model):
    layer_map = layer_map_for(model)
    wrong = LayerMap(names=(*layer_map.names, "layer.9"), towers=layer_map.towers)
    with pytest.raises(ValueError, match="layer.9"):
        score_layers(model, random_batch(model.config, n=2), wrong)


def test_non_finite_weights_name_the_layer():
    model = tiny_vilt(num_labels=5, num_hidden_layers=3, seed=1)
    with torch.no_grad():
        model.vilt.encoder.layer[1].intermediate.dense.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer.1"):
        score_layers(model, random_batch(model.config, n=2), layer_map_for(model))


@pytest.mark.parametrize("method", SCORERS)
def test_non_finite_outputs_are_rejected(method):
    model = tiny_vilt(num_labels=5, num_hidden_layers=2, seed=1)
    with torch.no_grad():
        model.classifier[-1].bias[0] = float("inf")
    if method in ("fd", "last", "magnitude"):
        score_layers(model, random_batch(model.config, n=2), layer_map_for(model), method=method)
        return
    with pytest.raises(ValueError, match="not finite"):
        score_layers(model, random_batch(model.config, n=2), layer_map_for(model), method=method)


def test_all_zero_scores_are_rejected():
    model = tiny_vilt(num_labels=5, num_hidden_layers=2, seed=1)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
    with pytest.raises(ValueError, match="exactly 0"):
        score_layers(model, random_batch(model.config, n=2), layer_map_for(model), reduction="logits")


def test_exact_reduction_has_no_row_cap():
    """8 samples x 600 answers = 4800 NTK rows, above the old cap of 4096: the head's width (128)
    bounds the rank, so the exact reduction runs on 8 x 128 rows (exactness: the next test)."""
    model = tiny_vilt(num_labels=600, num_hidden_layers=1, seed=1)
    scores = score_layers(model, random_batch(model.config, n=8), layer_map_for(model), reduction="logits")
    assert scores.raw[0] > 0


def test_exact_reduction_on_a_head_wider_than_its_input_matches_the_dense_jacobian():
    """κ = 40 answers on a head of width D = 32: the rotation onto the head's D singular directions
    keeps every nonzero eigenvalue of the full (nκ x nκ) NTK."""

    def make():
        return tiny_vilt(num_labels=40, num_hidden_layers=2, hidden_size=16, intermediate_size=32, seed=2)

    model = make()
    assert model.classifier[-1].in_features < model.config.num_labels
    layer_map = layer_map_for(model)
    batch = random_batch(model.config, n=2, seq_len=4, seed=3)
    scores = score_layers(model, batch, layer_map, reduction="logits")
    reduced = reduced_outputs(model, batch, "logits", 1, 0)
    assert reduced.shape == (2, model.classifier[-1].in_features)

    reference = dense_lntk_of(make(), batch, layer_map, logits_of)
    np.testing.assert_allclose(scores.raw, reference, rtol=1e-4)


def briefly_trained_vilt(layers: int = 3, steps: int = 20):
    """A tiny ViLT trained for a few steps: its answer head gets the dominant singular direction a
    trained BCE head has (the pretrained regime the default reduction is built for)."""
    model = tiny_vilt(num_labels=13, num_hidden_layers=layers, seed=0)
    batch = random_batch(model.config, n=16, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(logits_of(model, batch), batch).backward()
        optimizer.step()
    return model.eval()


def test_default_reduction_agrees_with_exact_on_a_trained_model():
    """Measured: Spearman 1.0 and top-2 equal on all four batches, largest |S - S_exact| 0.007-0.020
    (the uniform vector: 0.11; the head's top direction alone, k = 1: 0.07-0.12); asserted with margin."""
    model = briefly_trained_vilt()
    layer_map = layer_map_for(model)
    rhos = []
    for seed in range(4):
        batch = random_batch(model.config, n=4, seed=100 + seed)
        exact = score_layers(model, batch, layer_map, reduction="logits")
        default = score_layers(model, batch, layer_map)
        assert set(default.top(2)) == set(exact.top(2)), seed
        assert np.abs(default.normalized - exact.normalized).max() <= 0.05, seed
        rhos.append(spearmanr(default.normalized, exact.normalized).statistic)
    assert np.mean(rhos) >= 0.9


def test_head_reduction_with_the_full_head_basis_is_exact(model, layer_map):
    batch = random_batch(model.config, n=3, seed=5)
    exact = score_layers(model, batch, layer_map, reduction="logits")
    full = score_layers(model, batch, layer_map, reduction="head", projection_dim=model.config.num_labels)
    np.testing.assert_allclose(full.raw, exact.raw, rtol=1e-5)
    assert model.config.num_labels > DEFAULT_PROJECTION_DIM
    truncated = score_layers(model, batch, layer_map, reduction="head", projection_dim=1)
    assert np.all(truncated.raw <= exact.raw * (1 + 1e-6))


def test_head_basis_is_orthonormal_and_ordered():
    weight = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    basis = head_basis(weight, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64))
    assert head_basis(weight).shape == (7, 5)
    norms = torch.linalg.norm(basis.T @ weight.double(), dim=1)
    assert torch.all(norms[:-1] >= norms[1:])


def test_head_reduction_needs_a_linear_head():
    class NoLinearHead(ToyModel):
        def forward(self, inputs):
            return SimpleNamespace(logits=2.0 * super().forward(inputs).logits)

    model = NoLinearHead()
    layer_map = LayerMap(names=("layer.0", "layer.1"), towers=(("layer", r"(?:^|\.)encoder\.layer\.(\d+)\."),))
    batch = {"inputs": torch.randn(2, 5, 6), "labels": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="scoring.reduction"):
        score_layers(model, batch, layer_map, reduction="head")
    assert score_layers(model, batch, layer_map, reduction="logits").raw.sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "lntk-alone"}, "Unknown scoring method"),
        ({"reduction": "mean"}, "Unknown scoring reduction"),
        ({"reduction": "projection", "projection_dim": 0}, "projection_dim"),
    ],
)
def test_bad_options_are_rejected(model, layer_map, kwargs, message):
    with pytest.raises(ValueError, match=message):
        score_layers(model, random_batch(model.config, n=2), layer_map, **kwargs)
