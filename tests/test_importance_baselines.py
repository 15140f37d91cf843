"""Every scorer behind ``score_layers``: valid output, a model left untouched, data (in)dependence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f3ocus_core.importance import SCORERS, score_layers
from f3ocus_core.importance.context import ScoringContext, scoring_state
from f3ocus_core.importance.gradient import loss_gradients
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import random_batch, tiny_vilt

DATA_FREE = ("fd", "last", "magnitude")
DATA_DEPENDENT = tuple(m for m in SCORERS if m not in DATA_FREE and m != "synflow")


@pytest.fixture(scope="module")
def model():
    return tiny_vilt(num_labels=5, num_hidden_layers=3, seed=3)


@pytest.fixture(scope="module")
def layer_map(model):
    return layer_map_for(model)


def snapshot(model):
    return (
        {name: tensor.clone() for name, tensor in model.state_dict().items()},
        {name: p.requires_grad for name, p in model.named_parameters()},
        [m.training for m in model.modules()],
    )


def test_every_paper_baseline_is_a_scorer():
    assert set(SCORERS) == {
        "lntk",
        "fd",
        "last",
        "magnitude",
        "fishmask",
        "gradflow",
        "grasp",
        "snip",
        "rgn",
        "synflow",
        "fedselect",
        "spt",
    }


@pytest.mark.parametrize("method", SCORERS)
def test_scorer_returns_valid_scores_and_leaves_the_model_as_it_was(method):
    model = tiny_vilt(num_labels=5, num_hidden_layers=3, seed=3)
    layer_map = layer_map_for(model)
    for name, param in model.named_parameters():
        param.requires_grad_("layer.1." not in name)
    model.train()
    before = snapshot(model)
    scores = score_layers(model, random_batch(model.config, n=3, seed=0), layer_map, method=method)
    after = snapshot(model)
    assert scores.method == method
    assert scores.raw.shape == scores.normalized.shape == (len(layer_map),)
    assert np.all(np.isfinite(scores.raw)) and np.all(scores.raw >= 0)
    assert np.all(scores.normalized >= 0) and np.isclose(scores.normalized.sum(), 1.0)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", DATA_DEPENDENT)
def test_data_dependent_scores_change_with_the_data(model, layer_map, method):
    a = score_layers(model, random_batch(model.config, n=3, seed=0), layer_map, method=method)
    b = score_layers(model, random_batch(model.config, n=3, seed=1), layer_map, method=method)
    assert not np.allclose(a.raw, b.raw, rtol=1e-4)


@pytest.mark.parametrize("method", DATA_FREE)
def test_data_free_scores_ignore_the_data(model, layer_map, method):
    a = score_layers(model, random_batch(model.config, n=3, seed=0), layer_map, method=method)
    b = score_layers(model, random_batch(model.config, n=5, seed=1), layer_map, method=method)
    np.testing.assert_array_equal(a.raw, b.raw)


def test_synflow_ignores_images_and_labels_but_not_the_weights(model, layer_map):
    batch = random_batch(model.config, n=3, seed=0)
    other = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]), labels=batch["labels"].roll(1, dims=1))
    a = score_layers(model, batch, layer_map, method="synflow")
    b = score_layers(model, other, layer_map, method="synflow")
    np.testing.assert_allclose(a.raw, b.raw, rtol=1e-6)
    changed = tiny_vilt(num_labels=5, num_hidden_layers=3, seed=4)
    c = score_layers(changed, batch, layer_map, method="synflow")
    assert not np.allclose(a.raw, c.raw, rtol=1e-4)


def test_fd_is_seeded(model, layer_map):
    batch = random_batch(model.config, n=2)
    a = score_layers(model, batch, layer_map, method="fd", seed=0)
    b = score_layers(model, batch, layer_map, method="fd", seed=0)
    c = score_layers(model, batch, layer_map, method="fd", seed=1)
    np.testing.assert_array_equal(a.raw, b.raw)
    assert not np.allclose(a.raw, c.raw)


def test_last_picks_the_last_layers(model, layer_map):
    scores = score_layers(model, random_batch(model.config, n=2), layer_map, method="last")
    assert scores.top(2) == [len(layer_map) - 1, len(layer_map) - 2]


def test_magnitude_follows_weight_scale():
    model = tiny_vilt(num_labels=5, num_hidden_layers=3, seed=3)
    layer_map = layer_map_for(model)
    with torch.no_grad():
        for param in model.vilt.encoder.layer[0].parameters():
            param.mul_(10.0)
    scores = score_layers(model, random_batch(model.config, n=2), layer_map, method="magnitude")
    assert scores.top(1) == [0]


def test_gradient_scorers_follow_their_formulas(model, layer_map):
    batch = random_batch(model.config, n=3, seed=2)
    params = layer_map.own_parameters(model)
    with scoring_state(model, params):
        grads = loss_gradients(ScoringContext(model, batch, layer_map, params, "logits", 1, 0))
    flat_g = [torch.cat([g.reshape(-1) for g in layer]).double() for layer in grads]
    flat_w = [torch.cat([p.detach().reshape(-1) for _, p in layer]).double() for layer in params]
    expected = {
        "gradflow": [float((g * g).sum()) for g in flat_g],
        "snip": [float((g * w).abs().sum()) for g, w in zip(flat_g, flat_w)],
        "rgn": [float(g.norm() / w.norm()) for g, w in zip(flat_g, flat_w)],
        "fedselect": [float(g.abs().mean()) for g in flat_g],
    }
    for method, values in expected.items():
        got = score_layers(model, batch, layer_map, method=method).raw
        np.testing.assert_allclose(got, values, rtol=1e-4, err_msg=method)


def test_fishmask_is_the_mean_per_sample_squared_gradient(model, layer_map):
    batch = random_batch(model.config, n=3, seed=5)
    params = layer_map.own_parameters(model)
    expected = np.zeros(len(layer_map))
    for s in range(3):
        single = {key: value[s : s + 1] for key, value in batch.items()}
        with scoring_state(model, params):
            grads = loss_gradients(ScoringContext(model, single, layer_map, params, "logits", 1, 0))
        expected += [sum(float((g.double() ** 2).sum()) for g in layer) / 3 for layer in grads]
    got = score_layers(model, batch, layer_map, method="fishmask").raw
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_grasp_matches_a_finite_difference_of_the_gradient_norm(model, layer_map):
    batch = random_batch(model.config, n=3, seed=6)
    params = layer_map.own_parameters(model)
    layer = 1

    def gradient_norm(scale):
        originals = [p.detach().clone() for _, p in params[layer]]
        try:
            with torch.no_grad():
                for _, p in params[layer]:
                    p.mul_(scale)
            with scoring_state(model, params):
                grads = loss_gradients(ScoringContext(model, batch, layer_map, params, "logits", 1, 0))
            return sum(float((g.double() ** 2).sum()) for layer_grads in grads for g in layer_grads) / 2
        finally:
            with torch.no_grad():
                for (_, p), original in zip(params[layer], originals):
                    p.copy_(original)

    eps = 1e-2
    directional = (gradient_norm(1 + eps) - gradient_norm(1 - eps)) / (2 * eps)
    got = score_layers(model, batch, layer_map, method="grasp").raw[layer]
    np.testing.assert_allclose(got, abs(directional), rtol=2e-2)


def test_fd_draws_per_client_and_round_and_repeats_for_the_same_pair(model, layer_map):
    batch = random_batch(model.config, n=2, seed=0)

    def draw(seed, client):
        return score_layers(model, batch, layer_map, method="fd", seed=seed, client_seed=client).raw

    np.testing.assert_array_equal(draw(5, 1), draw(5, 1))
    assert not np.allclose(draw(5, 1), draw(5, 2))
    assert not np.allclose(draw(5, 1), draw(6, 1))
    tops = {tuple(sorted(np.argsort(-draw(5, client))[:2])) for client in range(8)}
    assert len(tops) > 1


def test_negative_seeds_are_rejected(model, layer_map):
    with pytest.raises(ValueError, match="client_seed"):
        score_layers(model, random_batch(model.config, n=2), layer_map, method="fd", client_seed=-1)
