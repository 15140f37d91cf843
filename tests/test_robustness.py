"""No single client can stop the server, poison the global model or take over the metrics (issue 19).

One test per class of attack the issue lists, each through Flower's round loop of the strategy
(``F3ocusStrategy.start`` over the in-process grid with the mock clients of ``tests/test_replies.py``)
or the unit under test: finite values that overflow once averaged or cast, scores whose sum
overflows, unchecked train metrics, partition ids, long names, metrics that average to inf, weight
takeover by ``num-examples``, unbounded updates, records the size check does not see, lost crash
evidence, and the bounded-influence settings (``aggregation.max-update-norm``,
``aggregation.max-client-share``, ``aggregation.robust``).
"""

from __future__ import annotations

import logging
import tomllib
import zipfile

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord

from f3ocus_core.checkpoint import Checkpoint, capture_rng, checkpoint_path, load_checkpoint, save_checkpoint
from f3ocus_core.config import ConfigError, parse_run_config
from f3ocus_core.importance import SCORERS
from f3ocus_core.peft_units import UnitMap
from f3ocus_core.recorder import RunRecorder
from f3ocus_core.selection import ALGORITHMS
from f3ocus_flower.protocol import ARRAYS, METRICS, NUM_EXAMPLES, SCORES, state_to_record
from server_app.strategy import F3ocusStrategy
from tests.inprocess_grid import InProcessGrid
from tests.test_replies import (
    EVALUATE,
    GLOBAL,
    HANDLERS,
    NAME,
    NODE,
    ROOT,
    TIMEOUT,
    TRAIN,
    UNITS,
    Run,
    _content,
    _Recorder,
    _round,
    client_info,
    metric_values,
    scores,
)

ROUNDS = 2


def make_settings(**overrides):
    """The shipped run config with the mock runs' settings and ``overrides`` (keys with ``_`` for ``-``)."""
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update(
        {
            "selection.budget": "1,2,1",
            "round-timeout": TIMEOUT,
            "selection.algorithm": "exact",
            "num-server-rounds": ROUNDS,
        }
    )
    config.update(overrides)
    return parse_run_config(config, SCORERS, ALGORITHMS)


def run(out, settings, handlers=None, delay=None, units: UnitMap = UNITS, start: dict | None = None) -> Run:
    """Flower's round loop of the strategy over three mock clients on ``units`` starting at ``start``."""
    grid = InProcessGrid({}, handlers or HANDLERS, 3, delay=delay)
    names = [str(layer) for layer in range(len(units.names))]
    strategy = F3ocusStrategy(settings, units, _Recorder(out, names))
    strategy.start(grid, state_to_record(start or GLOBAL), ROUNDS, timeout=TIMEOUT)
    return Run(strategy, strategy.recorder.rows, grid)


def dropped(out, settings, phase: str, server_round: int, **kwargs) -> Run:
    """The reference: the same run with node 2's ``phase`` reply of ``server_round`` never arriving."""
    late = (NODE, phase, server_round)
    return run(out, settings, delay=lambda *call: 2 * TIMEOUT if call == late else 0.0, **kwargs)


def tampered(phase: str, tamper, rounds=(1,), node: int = NODE) -> dict:
    """The honest handlers, with ``node``'s ``phase`` replies of ``rounds`` passed through ``tamper``."""

    def wrapped(msg: Message, context):
        reply = HANDLERS[phase](msg, context)
        if msg.metadata.dst_node_id == node and _round(msg) in rounds:
            return tamper(msg, reply)
        return reply

    return {**HANDLERS, phase: wrapped}


def rejected(result: Run, check: str) -> list[tuple[int, str, str]]:
    """(round, phase, client) of every rejection with ``check``."""
    return [
        (row["round"], f["phase"], f["client"])
        for row in result.rows
        for f in row["failed"]
        if f["reason"].split(":")[0] == check
    ]


def finite(result: Run) -> bool:
    return all(np.all(np.isfinite(value)) for value in result.strategy.state.global_units.values())


# ---------------------------------------------------------------- values that overflow after the checks

LORA = UnitMap(tuple((f"m{i}.lora_A.default.weight", f"m{i}.lora_B.default.weight") for i in range(3)))
LORA_START = {
    key: (
        np.linspace(-0.5, 0.5, 8, dtype=np.float32).reshape(2, 4)
        if "lora_A" in key
        else np.linspace(0.1, 0.2, 8, dtype=np.float32).reshape(4, 2)
    )
    for layer in LORA.names
    for key in layer
}


def _fill(value: float):
    def tamper(request: Message, reply: Message) -> Message:
        arrays = {key: Array(np.full(array.shape, value, np.float32)) for key, array in reply.content[ARRAYS].items()}
        return Message(_content(reply, arrays=ArrayRecord(arrays)), reply_to=request)

    return tamper


def test_finite_float32_factors_that_overflow_in_the_product_mean_are_rejected(tmp_path, caplog):
    """LoRA factors of 1e38 are finite float32; the product mean of two clients holding them has
    singular values near 1e77 and factors near 1e38.5: inf once cast back to float32."""
    settings = make_settings(
        **{"selection.budget": "3", "aggregation.max-update-norm": 0.0, "aggregation.max-client-share": 1.0}
    )
    with caplog.at_level(logging.WARNING, logger="flwr"):
        attacked = run(tmp_path / "a", settings, tampered(TRAIN, _fill(1e38)), units=LORA, start=LORA_START)
    reference = dropped(tmp_path / "r", settings, TRAIN, 1, units=LORA, start=LORA_START)
    assert finite(attacked)
    assert rejected(attacked, "magnitude") == [(1, TRAIN, NAME)]
    assert attacked.state() == reference.state()


def test_scores_whose_sum_overflows_do_not_crash_the_default_selector(tmp_path):
    """[1e308, 0, 1e308] is finite and non-negative; the scores are normalised to sum to 1 as an
    honest client's are, so the client gets the assignment of the scores [0.5, 0, 0.5]."""
    settings = make_settings(**{"selection.algorithm": "nsga2"})
    attacked = run(tmp_path / "a", settings, tampered(EVALUATE, scores(scores=[1e308, 0.0, 1e308]), rounds=(0,)))
    halves = run(tmp_path / "h", settings, tampered(EVALUATE, scores(scores=[0.5, 0.0, 0.5]), rounds=(0,)))
    assert [row["round"] for row in attacked.rows] == [0, 1, 2]
    assert attacked.state() == halves.state() and attacked.outcome() == halves.outcome()


@pytest.mark.parametrize(
    "key,value",
    [
        ("trainable_params", float("nan")),
        ("trainable_params", [1.0, 2.0]),
        ("train_gflop", float("inf")),
        ("train_gflop", -1.0),
        ("trainable_params", -5),
    ],
)
def test_train_metrics_are_checked_before_they_are_recorded(key, value, tmp_path):
    settings = make_settings()
    attacked = run(tmp_path / "a", settings, tampered(TRAIN, metric_values(**{key: value})))
    reference = dropped(tmp_path / "r", settings, TRAIN, 1)
    assert rejected(attacked, "train-metrics") == [(1, TRAIN, NAME)]
    assert attacked.state() == reference.state()


def test_a_partition_id_outside_the_budget_list_is_rejected(tmp_path):
    settings = make_settings()  # selection.budget "1,2,1": partition ids 0..2
    handlers = {
        phase: tampered(phase, client_info(partition_id=5, name="client/5"), rounds=(0, 1, 2))[phase]
        for phase in (TRAIN, EVALUATE)
    }
    attacked = run(tmp_path, settings, handlers)
    assert [row["round"] for row in attacked.rows] == [0, 1, 2]
    assert {(r, phase) for r, phase, client in rejected(attacked, "client-info") if client == "node-2"} == {
        (0, EVALUATE),
        (1, EVALUATE),
        (2, EVALUATE),
    }


def test_a_second_client_with_the_same_partition_id_is_rejected(tmp_path):
    settings = make_settings()
    handlers = {
        phase: tampered(phase, client_info(partition_id=0, name="client/x"), rounds=(0, 1, 2))[phase]
        for phase in (TRAIN, EVALUATE)
    }
    attacked = run(tmp_path, settings, handlers)
    assert [row["round"] for row in attacked.rows] == [0, 1, 2]
    assert "node-2" in {client for _, _, client in rejected(attacked, "identity")}
    assert all(set(row["metric_per_client"]) == {"client/0", "client/2"} for row in attacked.rows)


def test_a_long_client_name_does_not_stop_the_run(tmp_path):
    settings = make_settings()
    handlers = {
        phase: tampered(phase, client_info(name="c" * 250), rounds=(0, 1, 2))[phase] for phase in (TRAIN, EVALUATE)
    }
    attacked = run(tmp_path, settings, handlers)
    assert [row["round"] for row in attacked.rows] == [0, 1, 2]
    assert (0, EVALUATE, "node-2") in rejected(attacked, "client-info")


def test_the_recorder_saves_labels_of_any_client_name(tmp_path):
    recorder = RunRecorder(tmp_path, ["0"])
    for name in ("a" * 300, "ü/" * 200, "../../x", "a\nb"):
        recorder.save_labels(name, "vqa", ["yes"])
    files = list((tmp_path / "labels").iterdir())
    assert len(files) == 4 and all(len(f.name) <= 120 and f.parent == tmp_path / "labels" for f in files)


def test_finite_losses_that_would_average_to_inf_never_reach_the_metrics(tmp_path):
    settings = make_settings()
    attacked = run(tmp_path, settings, tampered(EVALUATE, metric_values(loss=1e308)))
    text = (tmp_path / "metrics.jsonl").read_text() if (tmp_path / "metrics.jsonl").exists() else ""
    assert "Infinity" not in text and "NaN" not in text
    assert all(row["loss"] is None or np.isfinite(row["loss"]) for row in attacked.rows)
    assert rejected(attacked, "metrics") == [(1, EVALUATE, NAME)]


# ---------------------------------------------------------------- bounded influence


def _inflated(request: Message, reply: Message) -> Message:
    """num-examples 10^9 in every reply (consistent between the scores and train), accuracy 1.0 and an
    update 1000 away from what was sent."""
    kind = request.metadata.message_type
    if kind == EVALUATE:
        reply = metric_values(num_examples=10**9, accuracy=1.0, metric=1.0)(request, reply)
        return scores(num_examples=10**9)(request, reply) if SCORES in reply.content else reply
    arrays = {key: Array(array.numpy() + np.float32(1000)) for key, array in reply.content[ARRAYS].items()}
    values = dict(reply.content[METRICS])
    values[NUM_EXAMPLES] = 10**9
    return Message(_content(reply, arrays=ArrayRecord(arrays), metrics=MetricRecord(values)), reply_to=request)


def _takeover_handlers() -> dict:
    return {phase: tampered(phase, _inflated, rounds=(0, 1, 2))[phase] for phase in (TRAIN, EVALUATE)}


def test_a_client_with_a_billion_examples_does_not_take_over_layers_or_metrics(tmp_path):
    settings = make_settings(
        **{"selection.budget": "3", "aggregation.max-update-norm": 0.0, "aggregation.max-client-share": 0.5}
    )
    capped = run(tmp_path / "capped", settings, _takeover_handlers())
    uncapped = run(
        tmp_path / "open",
        make_settings(
            **{"selection.budget": "3", "aggregation.max-update-norm": 0.0, "aggregation.max-client-share": 1.0}
        ),
        _takeover_handlers(),
    )
    for row in capped.rows[1:]:
        others = [m for name, m in row["metric_per_client"].items() if name != NAME]
        assert row["metric"] <= 0.5 * 1.0 + 0.5 * max(others) + 1e-12
    # Every layer is trained by all three clients: the attacker's +1000 enters with weight 1/2 at most.
    shift = max(float(np.max(np.abs(value - GLOBAL[key]))) for key, value in capped.strategy.state.global_units.items())
    assert 400 < shift < 1100  # two rounds of at most +500 each
    # Without the cap it takes the layers and the metric over.
    assert uncapped.rows[1]["metric"] > 0.999
    assert max(float(np.max(np.abs(v - GLOBAL[k]))) for k, v in uncapped.strategy.state.global_units.items()) > 1900


def test_an_unbounded_update_is_clipped_relative_to_the_layer(tmp_path):
    settings = make_settings(**{"aggregation.max-update-norm": 1.0, "aggregation.max-client-share": 1.0})
    attacked = run(tmp_path / "a", settings, tampered(TRAIN, _fill(1e30)))
    assert finite(attacked)
    norms = {key: float(np.linalg.norm(value)) for key, value in attacked.strategy.state.global_units.items()}
    assert max(norms.values()) < 100
    open_ = run(tmp_path / "o", make_settings(**{"aggregation.max-update-norm": 0.0}), tampered(TRAIN, _fill(1e30)))
    assert max(float(np.max(np.abs(v))) for v in open_.strategy.state.global_units.values()) > 1e28


def test_a_record_the_size_check_does_not_count_is_rejected(tmp_path):
    def padded(request: Message, reply: Message) -> Message:
        content = _content(reply)
        content["padding"] = ArrayRecord({"x": Array(np.zeros(500_000, np.float32))})
        return Message(content, reply_to=request)

    settings = make_settings()
    attacked = run(tmp_path / "a", settings, tampered(TRAIN, padded))
    reference = dropped(tmp_path / "r", settings, TRAIN, 1)
    assert rejected(attacked, "records") == [(1, TRAIN, NAME)]
    assert attacked.state() == reference.state()


# ---------------------------------------------------------------- crash evidence


def test_a_round_in_which_no_client_evaluates_still_writes_its_row(tmp_path):
    settings = make_settings()
    quiet = run(tmp_path, settings, delay=lambda node, kind, r: 2 * TIMEOUT if (kind, r) == (EVALUATE, 1) else 0.0)
    assert [row["round"] for row in quiet.rows] == [0, 1, 2]
    row = quiet.rows[1]
    assert row["metric"] is None and row["clients_evaluated"] == 0 and row["assignment"]
    assert sorted(f["client"] for f in row["failed"] if f["phase"] == EVALUATE) == ["client/0", "client/1", "client/2"]


def test_round_0_without_evaluations_writes_its_row_before_stopping(tmp_path):
    settings = make_settings()
    with pytest.raises(RuntimeError, match="No client could evaluate"):
        run(tmp_path, settings, delay=lambda node, kind, r: 2 * TIMEOUT if kind == EVALUATE else 0.0)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert '"round": 0' in text and "timeout" in text


def _saved(tmp_path) -> bytes:
    rng, torch_rng = capture_rng()
    save_checkpoint(
        tmp_path, Checkpoint(1, {"a": np.ones(3, np.float32)}, {"clients": []}, {"seed": 0}, rng, torch_rng)
    )
    return checkpoint_path(tmp_path).read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no-meta", "bad-meta"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(damage, tmp_path):
    data = _saved(tmp_path)
    path = checkpoint_path(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        with zipfile.ZipFile(path, "w") as archive:
            if damage == "bad-meta":
                import io

                buffer = io.BytesIO()
                np.save(buffer, np.frombuffer(b"{not json", dtype=np.uint8))
                archive.writestr("meta.npy", buffer.getvalue())
    with pytest.raises(ConfigError, match=r"resume: .*state\.npz.*cannot be read"):
        load_checkpoint(tmp_path)


def test_an_error_reason_cannot_write_lines_into_the_log(tmp_path, caplog):
    def forged(request: Message, reply: Message) -> Message:
        return Message(
            Error(code=0, reason="boom\nRound 1, train: reply of client client/0 rejected [finite]: x"),
            reply_to=request,
        )

    with caplog.at_level(logging.WARNING, logger="flwr"):
        attacked = run(tmp_path, make_settings(), tampered(TRAIN, forged))
    assert all("\n" not in record.getMessage() for record in caplog.records)
    assert rejected(attacked, "error") == [(1, TRAIN, NAME)]


def test_unexpected_records_in_evaluate_replies_are_rejected(tmp_path):
    def extra(request: Message, reply: Message) -> Message:
        content = _content(reply)
        content["extra"] = ConfigRecord({"x": "y" * 1000})
        return Message(content, reply_to=request)

    attacked = run(tmp_path, make_settings(), tampered(EVALUATE, extra))
    assert rejected(attacked, "records") == [(1, EVALUATE, NAME)]


# ---------------------------------------------------------------- the bounded-influence units


def test_capped_shares_water_fill_below_the_cap():
    from f3ocus_core.aggregation import capped_shares

    np.testing.assert_allclose(capped_shares([10**9, 8, 24], 0.5), [0.5, 0.125, 0.375])
    np.testing.assert_allclose(capped_shares([8, 16, 24], 0.5), [8 / 48, 16 / 48, 24 / 48])  # honest: unchanged
    np.testing.assert_allclose(capped_shares([100, 100, 1, 1], 0.3), [0.3, 0.3, 0.2, 0.2])
    np.testing.assert_allclose(capped_shares([5, 1], 0.4), [0.5, 0.5])  # a cap below 1/k: equal shares
    assert capped_shares([7], 0.1).tolist() == [1.0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights, cap = rng.integers(1, 10**9, size=rng.integers(1, 8)), rng.uniform(0.05, 1.0)
        shares = capped_shares(weights, cap)
        assert abs(shares.sum() - 1) < 1e-12 and np.all(shares <= max(cap, 1 / len(weights)) + 1e-12)


def test_robust_statistics_ignore_one_outlier():
    from f3ocus_core.aggregation import robust_mean

    values = np.array([[1.0, 2.0], [1.2, 2.2], [1e30, -1e30], [0.8, 1.8]])
    np.testing.assert_allclose(robust_mean(values, "median"), [1.1, 1.9])
    np.testing.assert_allclose(robust_mean(values, "trimmed-mean"), [1.1, 1.9])
    five = np.array([[1.0], [2.0], [3.0], [4.0], [1e30]])
    assert robust_mean(five, "trimmed-mean").tolist() == [3.0] and robust_mean(five, "median").tolist() == [3.0]


def test_bound_update_clips_each_layer_relative_to_what_was_sent():
    from f3ocus_core.aggregation import PartialUpdate, bound_update

    sent = {"a": np.full(4, 1.0, np.float32), "b": np.zeros(2, np.float32), "c": np.ones(3, np.float32)}
    update = PartialUpdate(
        "x", {"a": np.full(4, 101.0, np.float32), "b": np.zeros(2, np.float32), "c": np.full(3, 1.5, np.float32)}, 8
    )
    clipped, ratios = bound_update(update, sent, [("a", "b"), ("c",)], 2.0)
    assert list(ratios) == [0] and ratios[0] == pytest.approx(100.0)
    assert np.linalg.norm(clipped.state["a"] - sent["a"]) == pytest.approx(2.0 * 2.0, rel=1e-6)
    assert clipped.state["c"] is update.state["c"]  # within the bound: untouched
    same, none = bound_update(PartialUpdate("y", {"c": np.full(3, 1.5, np.float32)}, 8), sent, [("c",)], 2.0)
    assert none == {} and same.state["c"].tolist() == [1.5] * 3


def test_a_median_keeps_the_honest_majority_against_one_attacker(tmp_path):
    settings = make_settings(
        **{
            "selection.budget": "3",
            "aggregation.max-update-norm": 0.0,
            "aggregation.max-client-share": 1.0,
            "aggregation.robust": "median",
        }
    )
    attacked = run(tmp_path / "a", settings, _takeover_handlers())
    honest = run(tmp_path / "h", settings)
    shift = max(
        float(np.max(np.abs(attacked.strategy.state.global_units[k] - honest.strategy.state.global_units[k])))
        for k in GLOBAL
    )
    assert shift < 1.0  # the attacker's +1000 does not get in; the median moves within the honest spread


@pytest.mark.parametrize(
    "key,value",
    [
        ("aggregation.max-update-norm", -1.0),
        ("aggregation.max-update-norm", float("nan")),
        ("aggregation.max-client-share", 0.0),
        ("aggregation.max-client-share", 1.5),
        ("aggregation.robust", "mean"),
    ],
)
def test_bad_bounded_influence_settings_stop_the_run_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        make_settings(**{key: value})


def test_the_magnitude_bound_holds_for_float64_and_float16_units_too():
    """Units stored in float64 (the dtype the server computes in) or float16: the largest values
    that pass still average, and LoRA-product-average, to finite values of that dtype."""
    from f3ocus_core.aggregation import PartialUpdate, aggregate_layers, check_magnitude, magnitude_limit

    for dtype in (np.float64, np.float16, np.float32):
        limit = magnitude_limit(np.dtype(dtype))
        start = {"m.lora_A.default.weight": np.ones((2, 4), dtype), "m.lora_B.default.weight": np.ones((4, 2), dtype)}
        edge = {key: np.full(value.shape, limit / np.sqrt(value.size) * 0.999, dtype) for key, value in start.items()}
        flipped = {key: -value for key, value in edge.items()}
        updates = [PartialUpdate("a", edge, 10**9), PartialUpdate("b", flipped, 1), PartialUpdate("c", edge, 7)]
        for update in updates:
            check_magnitude(update)  # passes
        for lora in ("product", "separate"):
            new = aggregate_layers(start, updates, lora=lora)
            assert all(np.all(np.isfinite(v)) and v.dtype == dtype for v in new.values()), (dtype, lora)
        over = {key: value * dtype(1.01) if dtype != np.float64 else value * 1e10 for key, value in edge.items()}
        with pytest.raises(ValueError, match="could overflow"):
            check_magnitude(PartialUpdate("d", over, 1))
