"""Issue 22 item 3: ``secagg=true`` runs SecAgg's stages as extra ``train`` exchanges of the round.
Through the in-process ServerApp: the run ends where the clear run with the same equal weights and
clip ends (to quantisation tolerance), the server never sees a client's units and one masked reply
is uniform, and a client that drops after sharing or after its masked input is recovered."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, MessageType
from flwr.common.secure_aggregation.quantization import quantize
from scipy.stats import chisquare

from f3ocus_core.checkpoint import load_checkpoint
from f3ocus_core.config import ConfigError
from f3ocus_flower.protocol import ARRAYS, CONFIG, MASKED_INPUT, SECAGG_STAGE, UNMASK, record_to_state
from f3ocus_flower.secure_sum import SecureSumParams
from tests.inprocess_grid import run_server_app
from tests.test_robustness import make_settings

CLIP = 0.05
NODES = 4


def _config(small_run_config: dict, secagg: bool, name: str, rounds: int) -> dict:
    """The small run, clipped (equal weights) without noise, on 4 clients; ``max-update-norm`` off in
    both runs, since secagg cannot apply it."""
    return dict(small_run_config, **{"secagg": secagg, "run-name": name, "num-server-rounds": rounds,
                                     "train.max-steps": 2, "dp.clip-norm": CLIP, "aggregation.lora": "separate",
                                     "aggregation.max-update-norm": 0.0})


def _units(config: dict) -> dict[str, np.ndarray]:
    return load_checkpoint(Path(config["output-dir"]) / config["run-name"]).units


def _stage(msg: Message) -> str:
    return str(msg.content.config_records[CONFIG].get(SECAGG_STAGE, "train"))


def _largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[key].astype(np.float64) - b[key]))) for key in a)


def test_a_secagg_run_ends_where_the_clear_run_ends_and_the_server_sees_only_masked_vectors(small_run_config,
                                                                                            no_figures):
    replies: list[tuple[str, Message]] = []
    changes: dict[int, dict[str, np.ndarray]] = {}

    def spy(train):
        def wrapped(msg, context):
            if _stage(msg) == MASKED_INPUT and msg.metadata.dst_node_id == 1 and 1 not in changes:
                changes[1] = record_to_state(context.state.array_records["secagg-change"])
            reply = train(msg, context)
            replies.append((_stage(msg), reply))
            return reply
        return wrapped

    clear = _config(small_run_config, False, "clear", 2)
    secure = _config(small_run_config, True, "secure", 2)
    _, clear_rows = run_server_app(clear, NODES)
    grid, rows = run_server_app(secure, NODES, wrap={MessageType.TRAIN: spy})

    assert [row.get("assignment") for row in rows] == [row.get("assignment") for row in clear_rows]
    assert all(not row["failed"] for row in rows)
    difference = _largest_difference(_units(secure), _units(clear))
    step = 2 * CLIP / SecureSumParams(CLIP).target_range
    print(f"secagg vs clear: largest |difference| of the final units {difference:.2e} (quantisation step {step:.1e})")
    assert difference <= 1e-5
    moved = max(float(np.max(np.abs(value))) for key, value in _units(clear).items() if ".lora_B." in key)
    assert moved > 1e-3  # LoRA's B starts at zero: the rounds moved the units far more than the tolerance
    # Four train exchanges per client per round, and not one float unit leaves a client.
    assert Counter(kind for _, kind in grid.calls) == {MessageType.TRAIN: 4 * NODES * 2,
                                                       MessageType.EVALUATE: NODES * 3}
    assert Counter(stage for stage, _ in replies) == {"train": 8, "share-keys": 8, MASKED_INPUT: 8, UNMASK: 8}
    for stage, reply in replies:
        arrays = reply.content.array_records.get(ARRAYS)
        assert (arrays is not None) == (stage == MASKED_INPUT)
        assert arrays is None or all(array.numpy().dtype == np.int64 for array in arrays.values())
    # The server's view of one reply is uniform over the ring; the same change unmasked is not.
    params = SecureSumParams(CLIP)
    masked = next(reply for stage, reply in replies if stage == MASKED_INPUT and reply.metadata.src_node_id == 1)
    values = np.concatenate([array.numpy().ravel() for array in masked.content.array_records[ARRAYS].values()])
    counts, _ = np.histogram(values, bins=8, range=(0, params.mod_range))
    print(f"one masked reply: {values.size} values, chi-square p = {chisquare(counts).pvalue:.3f}")
    assert values.size > 10_000 and chisquare(counts).pvalue > 1e-3
    plain = np.concatenate([q.ravel() for q in quantize(list(changes[1].values()), CLIP, params.target_range)])
    plain_counts, _ = np.histogram(plain, bins=8, range=(0, params.target_range))
    assert chisquare(plain_counts).pvalue < 1e-12  # the change itself sits near the middle of its range


@pytest.mark.parametrize(("stage", "counted"), [(MASKED_INPUT, False), (UNMASK, True), ("tampered", False)])
def test_a_client_that_drops_after_sharing_or_after_its_masked_input_is_recovered(small_run_config, no_figures,
                                                                                  caplog, stage, counted):
    """Node 2 fails at ``stage`` of round 1 (``tampered``: it sends a float vector, rejected). Dropping
    before its masked input, its pairwise masks are removed with its key shares and its change is left
    out; dropping after, its private mask is removed with its seed shares and its change counts."""
    def drop(train):
        def wrapped(msg, context):
            if msg.metadata.dst_node_id == 2 and _stage(msg) == (MASKED_INPUT if stage == "tampered" else stage):
                if stage != "tampered":
                    raise RuntimeError(f"node 2 lost at {stage}")
                reply = train(msg, context)
                arrays = reply.content.array_records[ARRAYS]
                for key in list(arrays):
                    arrays[key] = type(arrays[key])(arrays[key].numpy().astype(np.float64))
                return reply
            return train(msg, context)
        return wrapped

    secure = _config(small_run_config, True, f"secure-{stage}", 1)
    clear = _config(small_run_config, False, f"clear-{stage}", 1)
    _, rows = run_server_app(secure, NODES, wrap={MessageType.TRAIN: drop})
    _, clear_rows = run_server_app(clear, NODES, fail=None if counted else
                                   (lambda node, kind, _: node == 2 and kind == MessageType.TRAIN))

    assert rows[-1]["coverage"] == clear_rows[-1]["coverage"]
    assert [f["client"] for f in rows[-1]["failed"]] == ["easy-vqa/1"]
    assert _largest_difference(_units(secure), _units(clear)) <= 1e-5
    if stage == "tampered":
        assert "[masked-shape]" in caplog.text


@pytest.mark.parametrize(("overrides", "key"), [
    ({"secagg": True}, "secagg"),
    ({"secagg": True, "dp.clip-norm": 1.0, "aggregation.lora": "separate", "control": "heads-only"}, "secagg"),
    ({"secagg": True, "dp.clip-norm": 1.0, "aggregation.lora": "separate", "aggregation.robust": "median"},
     "aggregation.robust"),
    ({"secagg": True, "dp.clip-norm": 1.0}, "aggregation.lora"),
])
def test_secagg_refuses_what_needs_a_clients_units(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        make_settings(**overrides)


def test_secagg_is_off_by_default():
    assert make_settings().secagg is False
    assert make_settings(**{"secagg": True, "dp.clip-norm": 1.0, "aggregation.lora": "separate"}).secagg


@pytest.mark.slow
def test_flwr_run_simulation_with_secagg(tmp_path, small_run_config):
    """The stages through Flower's own runtime (messages serialised, each client's ``context.state``
    kept by the simulation between messages), 2 clients."""
    from tests.test_e2e_flwr import run_flwr

    config = {key: small_run_config[key] for key in (
        "num-server-rounds", "run-name", "output-dir", "model.cache-dir", "model.pretrain-steps",
        "data.max-train-per-client", "data.max-test-per-client", "train.batch-size")}
    config.update({"secagg": True, "dp.clip-norm": CLIP, "aggregation.lora": "separate"})
    result = run_flwr(tmp_path, config)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    out = Path(config["output-dir"]) / config["run-name"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(not row["failed"] and sum(row["coverage"]) == 4 for row in rows[1:])
    assert "Secure aggregation: the server learns each layer's sum only" in log
