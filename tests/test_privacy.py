"""Differential privacy (issue 22): the clipping bound, the per-layer noise's std, the accountant
against Flower's, the config checks, and a run that stops before it would exceed its budget."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.supercore.differential_privacy import compute_clip_model_update

from f3ocus_core.aggregation import PartialUpdate, aggregate_layers
from f3ocus_core.checkpoint import load_checkpoint
from f3ocus_core.config import ConfigError
from f3ocus_core.privacy import (
    PrivacyLedger,
    PrivacySettings,
    add_layer_noise,
    clip_update,
    equal_weight_clipped,
    layer_noise_std,
    privatize_scores,
    update_norm,
)
from f3ocus_core.recorder import round_log_line
from f3ocus_flower.protocol import state_to_record
from server_app.strategy import F3ocusStrategy
from tests.inprocess_grid import InProcessGrid
from tests.test_replies import GLOBAL, HANDLERS, TIMEOUT, UNITS, _Recorder
from tests.test_robustness import make_settings

DP_ON = {"dp.clip-norm": 1.0, "aggregation.lora": "separate"}


def _random_state(rng, scale: float) -> dict[str, np.ndarray]:
    return {
        "a": (scale * rng.normal(size=(3, 4))).astype(np.float32),
        "b": (scale * rng.normal(size=5)).astype(np.float32),
    }


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_clip_update_bounds_the_whole_change_and_matches_flowers_flatclip(scale):
    rng = np.random.default_rng(0)
    old, new = _random_state(rng, 1.0), _random_state(rng, scale)
    clipped, norm = clip_update(new, old, 0.5)

    assert norm == pytest.approx(update_norm(new, old))
    assert update_norm(clipped, old) <= 0.5 * (1 + 1e-6)
    if norm <= 0.5:  # small changes pass unchanged
        assert all(np.array_equal(clipped[k], new[k]) for k in new)
    flower = [new[k].astype(np.float64).copy() for k in ("a", "b")]
    compute_clip_model_update(flower, [old[k].astype(np.float64) for k in ("a", "b")], 0.5)
    for key, expected in zip(("a", "b"), flower):
        np.testing.assert_allclose(clipped[key], expected, rtol=1e-5, atol=1e-6)


def test_server_clips_again_and_averages_with_equal_weights():
    old = {"w": np.zeros(4, np.float32)}
    updates = [
        PartialUpdate("big", {"w": np.full(4, 10.0, np.float32)}, 1000),  # norm 20: clipped to 1
        PartialUpdate("small", {"w": np.full(4, 0.1, np.float32)}, 1),
    ]  # norm 0.2: kept
    private = equal_weight_clipped(updates, [old, old], 1.0)

    assert [u.num_examples for u in private] == [1, 1]
    mean = aggregate_layers(old, private, lora="separate", max_share=0.5)["w"]
    np.testing.assert_allclose(mean, (0.5 + 0.1) / 2, rtol=1e-6)  # unweighted, whatever the examples


def test_layer_noise_has_std_sigma_clip_over_count_and_spares_untrained_layers():
    state = {"l0": np.zeros(20000, np.float32), "l1": np.zeros(20000, np.float32), "l2": np.full(5, 7.0, np.float32)}
    noised = add_layer_noise(
        state, [("l0",), ("l1",), ("l2",)], [1, 4, 0], noise_multiplier=1.5, clip_norm=2.0, rng=np.random.default_rng(7)
    )

    for key, count in (("l0", 1), ("l1", 4)):
        std = layer_noise_std(1.5, 2.0, count)
        sample = noised[key].astype(np.float64)
        # The sample std of n normals is within 4 standard errors (std / sqrt(2n)) of the true one.
        assert abs(sample.std() - std) < 4 * std / math.sqrt(2 * sample.size)
        assert abs(sample.mean()) < 4 * std / math.sqrt(sample.size)
    assert noised["l2"] is state["l2"]
    assert layer_noise_std(1.5, 2.0, 4) == pytest.approx(0.75)


def test_ledger_matches_flowers_rdp_accountant_for_updates_and_scores():
    settings = PrivacySettings(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5, score_noise_multiplier=3.0)
    ledger = PrivacyLedger(settings, population=20)
    updates = RdpAccountant(PrivacyConfig(1e-5, 20, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.POISSON))
    scores = RdpAccountant(
        PrivacyConfig(1e-5, 20, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    )
    for _ in range(5):
        spent = ledger.record(5)
        updates.compose(GaussianPrivacyEvent(1.1, 5, 20))
        scores.compose(GaussianPrivacyEvent(3.0, 5, 20))
        assert spent["epsilon_updates"] == pytest.approx(updates.get_epsilon(1e-5), rel=1e-9)
        assert spent["epsilon_scores"] == pytest.approx(scores.get_epsilon(1e-5), rel=1e-9)
    assert 0 < spent["epsilon_updates"] < spent["epsilon_scores"] * 10
    assert PrivacyLedger(PrivacySettings(clip_norm=1.0), 20).record(5) == {"epsilon_updates": math.inf}


def test_ledger_says_which_round_would_exceed_the_target():
    settings = PrivacySettings(clip_norm=1.0, noise_multiplier=1.0, target_epsilon=8.0)
    ledger = PrivacyLedger(settings, population=4)
    rounds = 0
    while ledger.would_exceed(4) is None:
        ledger.record(4)
        rounds += 1
    assert rounds == 2  # epsilon 4.73, 7.08, then 9.01
    assert ledger.epsilons()["epsilon_updates"] <= 8.0 < ledger.epsilons(4)["epsilon_updates"]
    assert "dp.target-epsilon" in ledger.would_exceed(4)


def test_noised_scores_stay_on_the_simplex_and_their_noise_is_calibrated():
    rng = np.random.default_rng(3)
    scores = np.array([0.7, 0.2, 0.1])
    noised = np.stack([privatize_scores(scores, 0.01, rng) for _ in range(2000)])
    assert np.all(noised >= 0) and np.allclose(noised.sum(axis=1), 1.0)
    # Far from the floor, with small noise e ~ N(0, (tau sqrt 2)^2) per entry, the renormalised first
    # entry moves by (1 - x0) e0 - x0 (e1 + e2) to first order: std tau sqrt 2 sqrt(0.3^2 + 2 x 0.7^2).
    expected = 0.01 * math.sqrt(2) * math.sqrt(0.3**2 + 2 * 0.7**2)
    assert np.std(noised[:, 0]) == pytest.approx(expected, rel=0.05)
    heavy = privatize_scores(scores, 100.0, rng)
    assert np.all(heavy > 0) and heavy.sum() == pytest.approx(1.0)  # never all zero, so always usable


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"dp.clip-norm": 1.0}, "aggregation.lora"),
        ({**DP_ON, "aggregation.robust": "median"}, "aggregation.robust"),
        ({"dp.noise-multiplier": 1.0}, "dp.noise-multiplier"),
        ({"dp.target-epsilon": 4.0}, "dp.target-epsilon"),
        ({**DP_ON, "dp.score-noise-multiplier": 1.0, "dp.target-epsilon": 4.0}, "dp.target-epsilon"),
        ({"dp.delta": 1.0}, "dp.delta"),
        ({**DP_ON, "control": "local-only"}, "control"),
        ({"dp.clip-norm": -1.0}, "dp.clip-norm"),
    ],
)
def test_bad_privacy_settings_stop_the_run_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        make_settings(**overrides)


def test_dp_is_off_by_default():
    dp = make_settings().dp
    assert not dp.updates and not dp.scores


def test_a_run_stops_cleanly_before_a_round_would_exceed_the_target(tmp_path, caplog):
    # sigma 1.0 with every client sampled: epsilon at delta 1e-5 is 4.73 after one round, 7.08 after two.
    settings = make_settings(**DP_ON, **{"dp.noise-multiplier": 1.0, "dp.target-epsilon": 6.0, "num-server-rounds": 4})
    strategy = F3ocusStrategy(settings, UNITS, _Recorder(tmp_path, ["0", "1", "2"]), fingerprint={"test": 1})
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.start(InProcessGrid({}, HANDLERS, 3), state_to_record(GLOBAL), 4, timeout=TIMEOUT)

    rows = strategy.recorder.rows
    trained = [row for row in rows if row["round"] > 0]
    assert len(trained) >= 1 and len(trained) < 4
    assert all(row["epsilon_updates"] <= 6.0 for row in trained)
    assert [row["epsilon_updates"] for row in trained] == sorted(row["epsilon_updates"] for row in trained)
    assert strategy.ledger.epsilons(3)["epsilon_updates"] > 6.0  # the next round would have exceeded it
    assert "stopped before round" in strategy.stopped and "dp.target-epsilon" in strategy.stopped
    assert load_checkpoint(tmp_path).server_round == trained[-1]["round"]
    assert "epsilon updates" in round_log_line(trained[-1], 4)
    assert any("dp.target-epsilon" in record.getMessage() for record in caplog.records)
    for key in ("layer.0.a", "layer.1.a", "layer.2.a"):  # noise reached every trained layer
        assert not np.array_equal(strategy.state.global_units[key], GLOBAL[key])


def test_score_noise_alone_reports_its_epsilon_every_round_and_leaves_updates_unclipped(tmp_path):
    settings = make_settings(**{"dp.score-noise-multiplier": 2.0})
    strategy = F3ocusStrategy(settings, UNITS, _Recorder(tmp_path, ["0", "1", "2"]))
    strategy.start(InProcessGrid({}, HANDLERS, 3), state_to_record(GLOBAL), 2, timeout=TIMEOUT)

    trained = [row for row in strategy.recorder.rows if row["round"] > 0]
    assert [row["round"] for row in trained] == [1, 2]
    assert "epsilon_updates" not in trained[0] and "epsilon_updates" not in strategy.recorder.rows[0]
    expected = PrivacyLedger(PrivacySettings(score_noise_multiplier=2.0), 3)
    assert [row["epsilon_scores"] for row in trained] == pytest.approx(
        [expected.record(3)["epsilon_scores"] for _ in trained]
    )
    assert "epsilon scores" in round_log_line(trained[1], 2) and "epsilon updates" not in round_log_line(trained[1], 2)


def test_a_checkpoint_carries_the_ledger_so_a_resumed_run_keeps_counting(tmp_path):
    settings = make_settings(**DP_ON, **{"dp.noise-multiplier": 2.0, "num-server-rounds": 2})
    first = F3ocusStrategy(settings, UNITS, _Recorder(tmp_path, ["0", "1", "2"]), fingerprint={"test": 1})
    first.start(InProcessGrid({}, HANDLERS, 3), state_to_record(GLOBAL), 1, timeout=TIMEOUT)
    resumed = F3ocusStrategy(settings, UNITS, _Recorder(tmp_path, ["0", "1", "2"]), fingerprint={"test": 1})
    resumed.import_state(load_checkpoint(tmp_path))
    resumed.start(InProcessGrid({}, HANDLERS, 3), state_to_record(GLOBAL), 2, timeout=TIMEOUT)

    expected = PrivacyLedger(settings.dp, 3)
    assert [row["epsilon_updates"] for row in resumed.recorder.rows if row["round"] > 0] == pytest.approx(
        [expected.record(3)["epsilon_updates"] for _ in range(2)]
    )


def test_the_apps_clip_each_update_and_noise_the_scores_before_they_leave(small_run_config, no_figures):
    from f3ocus_flower.protocol import ARRAYS, SCORES, ScoresReply, record_to_state
    from tests.inprocess_grid import run_server_app

    config = dict(
        small_run_config,
        **{
            **DP_ON,
            "dp.clip-norm": 0.05,
            "dp.noise-multiplier": 0.5,
            "dp.score-noise-multiplier": 1.0,
            "train.max-steps": 2,
        },
    )
    changes, sent_scores = [], []

    def spy_train(train):
        def wrapped(msg, context):
            reply = train(msg, context)
            changes.append(
                update_norm(
                    record_to_state(reply.content.array_records[ARRAYS]),
                    record_to_state(msg.content.array_records[ARRAYS]),
                )
            )
            return reply

        return wrapped

    def spy_query(query):
        def wrapped(msg, context):
            reply = query(msg, context)
            sent_scores.append(ScoresReply.from_record(reply.content.metric_records[SCORES]))
            return reply

        return wrapped

    _, rows = run_server_app(config, num_nodes=2, wrap={"train": spy_train, "query": spy_query})

    assert len(changes) == 4 and max(changes) <= 0.05 * (1 + 1e-4)
    assert max(changes) > 0.04  # the lr moves the units by more than the bound: clipping bit
    for reply in sent_scores:
        assert reply.raw == reply.normalized and sum(reply.normalized) == pytest.approx(1.0)
    trained = [row for row in rows if row["round"] > 0]
    assert [row["epsilon_updates"] for row in trained] == pytest.approx(
        [PrivacyLedger(PrivacySettings(clip_norm=0.05, noise_multiplier=0.5), 2).record(2)["epsilon_updates"]]
        + [PrivacyLedger(PrivacySettings(clip_norm=0.05, noise_multiplier=0.5), 2, [2]).record(2)["epsilon_updates"]]
    )
    assert all(row["epsilon_scores"] > 0 and row["dp_delta"] == 1e-5 for row in trained)


def test_noise_multiplier_for_a_budget_is_the_smallest_that_fits():
    from f3ocus_core.privacy import noise_multiplier_for

    sigma = noise_multiplier_for(4.0, rounds=6, sample_size=4, population=4, delta=1e-5)

    def spent(s: float) -> float:
        ledger = PrivacyLedger(PrivacySettings(clip_norm=1.0, noise_multiplier=s), 4, [4] * 6)
        return ledger.epsilons()["epsilon_updates"]

    assert spent(sigma) <= 4.0 < spent(sigma * 0.99)


def test_the_start_line_projects_the_whole_runs_epsilon():
    ledger = PrivacyLedger(PrivacySettings(clip_norm=1.0, noise_multiplier=1.0, target_epsilon=8.0), 4)
    line = ledger.describe(3, 4)
    assert "after 3 rounds: epsilon_updates 9.01" in line and "(target 8)" in line and ledger.rounds == []


def test_score_releases_outside_the_rounds_are_counted_on_their_own():
    settings = PrivacySettings(clip_norm=1.0, noise_multiplier=1.0, score_noise_multiplier=2.0)
    ledger = PrivacyLedger(settings, 4)
    ledger.record_scores()  # e.g. scores collected with the round-0 evaluation
    ledger.record(4)
    twice = PrivacyLedger(settings, 4)
    twice.record(4)
    twice.record(4)
    assert ledger.epsilons()["epsilon_scores"] == pytest.approx(twice.epsilons()["epsilon_scores"])
    assert ledger.epsilons()["epsilon_updates"] < twice.epsilons()["epsilon_updates"]


def test_spread_over_sampled_divides_each_layers_sum_by_the_number_sampled():
    from f3ocus_core.privacy import spread_over_sampled

    old = {"a": np.zeros(3, np.float32), "b": np.ones(2, np.float32), "c": np.full(2, 5.0, np.float32)}
    new = {"a": np.full(3, 3.0, np.float32), "b": np.full(2, 2.0, np.float32), "c": old["c"]}
    spread = spread_over_sampled(new, old, [("a",), ("b",), ("c",)], [2, 1, 0], sampled=4)
    np.testing.assert_allclose(spread["a"], 1.5)  # sum 6 over 4 sampled, not 2 trainers
    np.testing.assert_allclose(spread["b"], 1.25)
    assert spread["c"] is new["c"]


def test_hiding_participation_noises_every_layer_even_one_nobody_trained(tmp_path):
    from f3ocus_core.recorder import RoundRecord
    from tests.test_strategy import _update

    settings = make_settings(
        **DP_ON,
        **{
            "dp.noise-multiplier": 1.0,
            "dp.hide-participation": True,
            "aggregation.max-update-norm": 0.0,
            "clients-per-round": 3,
        },
    )
    strategy = F3ocusStrategy(settings, UNITS, _Recorder(tmp_path, ["0", "1", "2"]))
    strategy.state.global_units = dict(GLOBAL)
    strategy.ledger = PrivacyLedger(settings.dp, 3)
    strategy.state.record = RoundRecord(1, assignment={1: [0], 2: [0]})
    change = {"layer.0.a": GLOBAL["layer.0.a"] + 0.1, "layer.0.b": GLOBAL["layer.0.b"]}
    arrays, _ = strategy.aggregate_train(1, [_update(1, change, 10, 1.0), _update(2, change, 10, 1.0)])

    from f3ocus_flower.protocol import record_to_state

    state = record_to_state(arrays)
    for key in ("layer.1.a", "layer.2.a"):  # trained by nobody, noised all the same
        assert not np.array_equal(state[key], GLOBAL[key])
    with pytest.raises(ConfigError, match="^dp.hide-participation"):
        make_settings(**{"dp.hide-participation": True})
