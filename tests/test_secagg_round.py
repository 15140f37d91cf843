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
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.secure_aggregation.quantization import quantize
from scipy.stats import chisquare

from client_app.secagg import answer_stage, keep_change
from f3ocus_core.checkpoint import load_checkpoint
from f3ocus_core.config import ConfigError
from f3ocus_flower.protocol import (
    ARRAYS,
    CIPHERTEXTS,
    CONFIG,
    LAYOUT,
    MASKED_INPUT,
    NODES,
    PUBLIC_KEYS,
    SECAGG,
    SECAGG_STAGE,
    SERVER_ROUND,
    SHARE_KEYS,
    SHARES,
    SURVIVORS,
    UNMASK,
    record_to_state,
    state_to_record,
)
from f3ocus_flower.secure_sum import SecureSumClient, SecureSumParams, threshold_for
from server_app.replies import Rejected
from tests.inprocess_grid import run_server_app
from tests.test_robustness import make_settings

CLIP = 0.05
NUM_NODES = 4


def _config(small_run_config: dict, secagg: bool, name: str, rounds: int) -> dict:
    """The small run, clipped (equal weights) without noise, on 4 clients; ``max-update-norm`` off in
    both runs, since secagg cannot apply it."""
    return dict(
        small_run_config,
        **{
            "secagg": secagg,
            "run-name": name,
            "num-server-rounds": rounds,
            "train.max-steps": 2,
            "dp.clip-norm": CLIP,
            "aggregation.lora": "separate",
            "aggregation.max-update-norm": 0.0,
        },
    )


def _units(config: dict) -> dict[str, np.ndarray]:
    return load_checkpoint(Path(config["output-dir"]) / config["run-name"]).units


def _stage(msg: Message) -> str:
    return str(msg.content.config_records[CONFIG].get(SECAGG_STAGE, "train"))


def _largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[key].astype(np.float64) - b[key]))) for key in a)


def test_a_secagg_run_ends_where_the_clear_run_ends_and_the_server_sees_only_masked_vectors(
    small_run_config, no_figures
):
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
    _, clear_rows = run_server_app(clear, NUM_NODES)
    grid, rows = run_server_app(secure, NUM_NODES, wrap={MessageType.TRAIN: spy})

    assert [row.get("assignment") for row in rows] == [row.get("assignment") for row in clear_rows]
    assert all(not row["failed"] for row in rows)
    difference = _largest_difference(_units(secure), _units(clear))
    step = 2 * CLIP / SecureSumParams(CLIP).target_range
    print(f"secagg vs clear: largest |difference| of the final units {difference:.2e} (quantisation step {step:.1e})")
    assert difference <= 1e-5
    moved = max(float(np.max(np.abs(value))) for key, value in _units(clear).items() if ".lora_B." in key)
    assert moved > 1e-3  # LoRA's B starts at zero: the rounds moved the units far more than the tolerance
    # Four train exchanges per client per round, and not one float unit leaves a client.
    assert Counter(kind for _, kind in grid.calls) == {
        MessageType.TRAIN: 4 * NUM_NODES * 2,
        MessageType.EVALUATE: NUM_NODES * 3,
    }
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
def test_a_client_that_drops_after_sharing_or_after_its_masked_input_is_recovered(
    small_run_config, no_figures, caplog, stage, counted
):
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
    _, rows = run_server_app(secure, NUM_NODES, wrap={MessageType.TRAIN: drop})
    _, clear_rows = run_server_app(
        clear, NUM_NODES, fail=None if counted else (lambda node, kind, _: node == 2 and kind == MessageType.TRAIN)
    )

    assert rows[-1]["coverage"] == clear_rows[-1]["coverage"]
    assert [f["client"] for f in rows[-1]["failed"]] == ["easy-vqa/1"]
    assert _largest_difference(_units(secure), _units(clear)) <= 1e-5
    if stage == "tampered":
        assert "[masked-shape]" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"secagg": True}, "secagg"),
        ({"secagg": True, "dp.clip-norm": 1.0, "aggregation.lora": "separate", "control": "heads-only"}, "secagg"),
        (
            {"secagg": True, "dp.clip-norm": 1.0, "aggregation.lora": "separate", "aggregation.robust": "median"},
            "aggregation.robust",
        ),
        ({"secagg": True, "dp.clip-norm": 1.0}, "aggregation.lora"),
    ],
)
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
    from tests.test_e2e_flwr import flwr_run_config, run_flwr

    config = flwr_run_config(small_run_config)
    config.update({"secagg": True, "dp.clip-norm": CLIP, "aggregation.lora": "separate"})
    result = run_flwr(tmp_path, config)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    out = Path(config["output-dir"]) / config["run-name"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(not row["failed"] and sum(row["coverage"]) == 4 for row in rows[1:])
    assert "Secure aggregation: the server learns each layer's sum only" in log


def test_too_many_drops_stop_the_rounds_aggregation_with_a_reason_and_keep_the_model(
    small_run_config, no_figures, caplog
):
    def drop(train):
        def wrapped(msg, context):
            if msg.metadata.dst_node_id in (2, 3) and _stage(msg) == MASKED_INPUT:
                raise RuntimeError("lost")
            return train(msg, context)

        return wrapped

    secure = _config(small_run_config, True, "secure-stopped", 1)
    _, rows = run_server_app(secure, NUM_NODES, wrap={MessageType.TRAIN: drop})

    assert rows[-1]["coverage"] == [0, 0, 0, 0]
    assert "secure aggregation stopped (2 of 4 clients sent a masked input, 3 needed)" in caplog.text
    assert all(not np.any(value) for key, value in _units(secure).items() if ".lora_B." in key)  # B starts at 0


def _stage_content(stage: str, server_round: int, **record) -> RecordDict:
    return RecordDict(
        {CONFIG: ConfigRecord({SERVER_ROUND: server_round, SECAGG_STAGE: stage}), SECAGG: ConfigRecord(record)}
    )


def test_a_client_answers_each_stage_once_in_order_and_checks_what_the_server_relays():
    state = RecordDict()
    shapes = {"a": (3,), "b": (2,)}
    sent = {"a": np.zeros(3, np.float32)}
    keys = keep_change(state, 1, 5, {"a": np.full(3, 0.1, np.float32)}, sent)
    other = SecureSumClient(2)
    publics = {1: (keys[PUBLIC_KEYS[0]], keys[PUBLIC_KEYS[1]]), 2: other.public}
    relay = {
        NODES: [1, 2],
        PUBLIC_KEYS[0]: [publics[1][0], publics[2][0]],
        PUBLIC_KEYS[1]: [publics[1][1], publics[2][1]],
    }

    with pytest.raises(RuntimeError, match="last step was train"):
        answer_stage(_stage_content(MASKED_INPUT, 5), state, CLIP, shapes)
    with pytest.raises(RuntimeError, match="round 4"):
        answer_stage(_stage_content(SHARE_KEYS, 4, **relay), state, CLIP, shapes)
    forged = dict(relay, **{PUBLIC_KEYS[0]: [publics[2][0], publics[2][0]]})
    with pytest.raises(RuntimeError, match="own public keys"):
        answer_stage(_stage_content(SHARE_KEYS, 5, **forged), state, CLIP, shapes)

    shared = answer_stage(_stage_content(SHARE_KEYS, 5, **relay), state, CLIP, shapes)[SECAGG]
    mine = dict(zip(shared[NODES], shared[CIPHERTEXTS]))
    theirs = other.share(publics, threshold_for(2))
    with pytest.raises(RuntimeError, match="layout leaves out"):  # refused before anything leaves: may be retried
        answer_stage(
            _stage_content(MASKED_INPUT, 5, **{NODES: [1, 2], CIPHERTEXTS: [mine[1], theirs[1]], LAYOUT: ["b"]}),
            state,
            CLIP,
            shapes,
        )
    masked = answer_stage(
        _stage_content(MASKED_INPUT, 5, **{NODES: [1, 2], CIPHERTEXTS: [mine[1], theirs[1]], LAYOUT: ["a", "b"]}),
        state,
        CLIP,
        shapes,
    )
    assert {key: array.numpy().dtype for key, array in masked[ARRAYS].items()} == {"a": np.int64, "b": np.int64}
    with pytest.raises(RuntimeError, match="number at least 2"):
        answer_stage(_stage_content(UNMASK, 5, **{SURVIVORS: [1]}), state, CLIP, shapes)
    revealed = answer_stage(_stage_content(UNMASK, 5, **{SURVIVORS: [1, 2]}), state, CLIP, shapes)[SECAGG]
    assert revealed[NODES] == [1, 2] and len(state) == 0  # secrets gone: no second reveal
    with pytest.raises(RuntimeError, match="holds no secrets"):
        answer_stage(_stage_content(UNMASK, 5, **{SURVIVORS: [1, 2]}), state, CLIP, shapes)


def test_the_server_rejects_malformed_secagg_replies_by_name():
    from server_app.secagg import check_masked_input, check_public_keys, check_shares

    good = SecureSumClient(1).public
    with pytest.raises(Rejected, match="secagg-keys"):
        check_public_keys(RecordDict({SECAGG: ConfigRecord({PUBLIC_KEYS[0]: b"junk", PUBLIC_KEYS[1]: good[1]})}), [])
    with pytest.raises(Rejected, match="secagg-keys"):
        check_public_keys(RecordDict({SECAGG: ConfigRecord(dict(zip(PUBLIC_KEYS, good)))}), [good])
    assert check_public_keys(RecordDict({SECAGG: ConfigRecord(dict(zip(PUBLIC_KEYS, good)))}), []) == good
    with pytest.raises(Rejected, match="secagg-shares"):
        check_shares(RecordDict({SECAGG: ConfigRecord({NODES: [1, 2], CIPHERTEXTS: [b"x"]})}), [1, 2], CIPHERTEXTS)
    with pytest.raises(Rejected, match="secagg-shares"):
        check_shares(RecordDict({SECAGG: ConfigRecord({NODES: [1], CIPHERTEXTS: [b"x"]})}), [1, 2], CIPHERTEXTS)
    with pytest.raises(Rejected, match="secagg-shares"):
        check_shares(RecordDict({SECAGG: ConfigRecord({NODES: [3], SHARES: [b"x"]})}), [1, 2], SHARES)
    layout = [("a", (3,))]
    for arrays, check in (
        ({"a": np.zeros(3, np.float64)}, "masked-shape"),
        ({"a": np.zeros(1000, np.int64)}, "size"),
        ({"b": np.zeros(3, np.int64)}, "masked-keys"),
        ({"a": np.full(3, -1, np.int64)}, "masked-range"),
    ):
        with pytest.raises(Rejected, match=check):
            check_masked_input(RecordDict({ARRAYS: state_to_record(arrays)}), layout, 1 << 40)
    ok = check_masked_input(RecordDict({ARRAYS: state_to_record({"a": np.arange(3, dtype=np.int64)})}), layout, 1 << 40)
    assert ok[0].tolist() == [0, 1, 2]
