"""Property-based tests of the reply checks (issue 19): replies generated from the protocol's own
schema (:mod:`f3ocus_flower.protocol`: every record of every phase, every key, dtype, shape and value
class, valid and invalid), thousands per run, with the invariants

- a reply is either accepted or rejected with one of the documented checks, never an exception
  (so one client cannot stop the run);
- what is accepted keeps the global units, the averaged train loss and every averaged metric finite
  (in float64, where the server computes, and in the units' float32, where it stores);
- a rejected reply changes nothing: through ``F3ocusStrategy.start`` the global units and the rows
  are bit-identical to the run without it, and the log names the client and the check.

Most examples run at the level of the checks and the aggregation (microseconds each); a few dozen
run the whole strategy over the mock clients of ``tests/test_replies.py``.
"""

from __future__ import annotations

import json
import logging
import tomllib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from f3ocus_core.aggregation import PartialUpdate, aggregate_layers, bound_update, capped_shares
from f3ocus_core.config import parse_run_config
from f3ocus_core.importance import SCORERS
from f3ocus_core.recorder import RoundRecord, metrics_row
from f3ocus_core.selection import ALGORITHMS, select
from f3ocus_flower.protocol import (
    ARRAYS,
    CLIENT,
    LOSS,
    METRIC,
    METRICS,
    NORMALIZED,
    NUM_EXAMPLES,
    RAW,
    SCORES,
    SECONDS,
    STEPS,
    TRAIN_GFLOP,
    TRAIN_LOSS,
    TRAINABLE_PARAMS,
    ClientInfo,
)
from server_app.replies import (
    REPLY_RECORDS,
    Rejected,
    check_client_info,
    check_evaluate_reply,
    check_records,
    check_score_values,
    check_train_reply,
    parse_scores_reply,
)
from tests.test_replies import GLOBAL, HANDLERS, NODE, ROOT, TIMEOUT, UNITS, _round
from tests.test_robustness import dropped, run

#: Every check a rejection may name (docs/reliability.md's table).
CHECKS = {
    "timeout",
    "sender",
    "duplicate",
    "error",
    "type",
    "records",
    "client-info",
    "identity",
    "scores-record",
    "scores-keys",
    "num-examples",
    "scores",
    "raw",
    "arrays-record",
    "metrics-record",
    "train-loss",
    "train-metrics",
    "size",
    "unknown-keys",
    "unassigned-keys",
    "missing-keys",
    "array",
    "dtype",
    "shape",
    "finite",
    "magnitude",
    "metrics",
    "update",
}

MANY = settings(
    max_examples=800,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ASSIGNED = [0, 1]  # the tested client's layers: units layer.0.a, layer.0.b, layer.1.a
ASSIGNED_KEYS = UNITS.keys_of(ASSIGNED)
QUERIED = 16  # the num-examples of its query reply

# ---------------------------------------------------------------- value classes

F32_MAX = float(np.finfo(np.float32).max)
floats = st.one_of(
    st.floats(-10, 10, allow_nan=False),  # ordinary
    st.sampled_from([0.0, -0.0, 1.0, 0.5]),
    st.sampled_from([1e30, -1e30, 1e38, -1e38, F32_MAX, -F32_MAX, 1e300, 1e308, 1.7e308, 5e-324, 1e-45]),
    st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    st.floats(allow_nan=True, allow_infinity=True),
)
ints = st.one_of(st.integers(1, 10**4), st.sampled_from([0, -1, QUERIED, 10**9, 10**9 + 1, 10**15, -(10**18)]))
numbers = st.one_of(floats, ints)
texts = st.one_of(
    st.sampled_from(["client/1", "easy-vqa/1", "", "c" * 129, "a\nb", "x\x00", "ü/ß"]), st.text(max_size=40)
)


def mostly(valid, *others, often: int = 10) -> st.SearchStrategy:
    """``valid`` ``often`` times as likely as each of ``others`` (so that most replies get far
    enough to meet the later checks and the aggregation, and every fault still comes up)."""
    return st.sampled_from([valid] * often + list(others))


def rarely() -> st.SearchStrategy:
    """True about one time in ten."""
    return mostly(False, True, often=9)


def _metric_record(values: dict) -> MetricRecord | None:
    try:
        return MetricRecord(values)
    except Exception:  # MetricRecord refuses the value: a client cannot send it either
        return None


@st.composite
def metric_values(draw, keys: dict[str, st.SearchStrategy]) -> dict:
    """Each key of ``keys`` present (with a value from its strategy, or any number) or absent."""
    values = {}
    for key, valid in keys.items():
        kind = draw(mostly("valid", "any", "list", "absent"))
        if kind == "valid":
            values[key] = draw(valid)
        elif kind == "any":
            values[key] = draw(numbers)
        elif kind == "list":
            values[key] = draw(st.lists(st.floats(allow_nan=True), max_size=3))
    if draw(rarely()):
        values[draw(st.sampled_from(["extra", "steps-x", ""]))] = draw(numbers)
    return values


@st.composite
def client_record(draw):
    kind = draw(mostly("valid", "fields", "missing", "as-metrics"))
    if kind == "missing":
        return None
    if kind == "as-metrics":
        return MetricRecord({"partition-id": 1})
    if kind == "valid":
        return ClientInfo("client/1", 1, "vqa").to_record()
    values = {
        "name": draw(st.one_of(texts, st.integers())),
        "partition-id": draw(st.one_of(ints, st.text(max_size=3))),
        "kind": draw(texts),
    }
    if draw(st.booleans()):
        values["labels"] = draw(st.one_of(st.lists(st.text(max_size=5), max_size=3), st.integers()))
    for key in draw(st.lists(st.sampled_from(["name", "partition-id", "kind"]), max_size=1)):
        values.pop(key)
    try:
        return ConfigRecord(values)
    except Exception:
        return None


@st.composite
def array(draw, key: str) -> Array:
    """The unit ``key`` as a client might send it: right or other dtype and shape, any value class,
    or bytes that are no ``.npy``."""
    reference = GLOBAL.get(key, np.zeros(3, np.float32))
    kind = draw(mostly("valid", "dtype", "shape", "garbage"))
    if kind == "garbage":
        return Array(dtype="float32", shape=reference.shape, stype="numpy.ndarray", data=draw(st.binary(max_size=64)))
    dtype = draw(st.sampled_from([np.float64, np.float16, np.int32])) if kind == "dtype" else np.float32
    shape = draw(st.sampled_from([(1,), (2, 2), (4,), (3,), (1, 4), ()])) if kind == "shape" else reference.shape
    fill = draw(mostly("honest", "constant", "mixed", often=3))
    size = int(np.prod(shape))
    if fill == "honest":
        values = np.resize(reference, size).astype(np.float64) * draw(st.floats(0.5, 1.5)) + draw(st.floats(-1, 1))
    elif fill == "constant":
        values = np.full(size, draw(floats))
    else:
        values = np.array(draw(st.lists(floats, min_size=size, max_size=size)), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return Array(np.ascontiguousarray(values.astype(dtype).reshape(shape)))


@st.composite
def train_reply(draw, assigned_keys: tuple[str, ...] = tuple(ASSIGNED_KEYS)) -> RecordDict:
    """A ``train`` reply: ARRAYS (the assigned units, some dropped, some foreign), METRICS, CLIENT,
    each valid, malformed, of another record type or missing, and maybe an extra record."""
    content = {}
    arrays_kind = draw(mostly("valid", "keys", "missing", "as-config"))
    if arrays_kind in ("valid", "keys"):
        keys = list(assigned_keys)
        if arrays_kind == "keys":
            keys = draw(st.lists(st.sampled_from([*UNITS.all_keys(), "classifier.weight"]), unique=True, max_size=5))
        content[ARRAYS] = ArrayRecord({key: draw(array(key)) for key in keys})
    elif arrays_kind == "as-config":
        content[ARRAYS] = ConfigRecord({"layer.0.a": 1.0})
    metrics = draw(
        metric_values(
            {
                NUM_EXAMPLES: st.just(QUERIED),
                TRAIN_LOSS: st.floats(0, 5),
                STEPS: ints,
                SECONDS: st.floats(0, 9),
                TRAINABLE_PARAMS: st.integers(0, 10**6),
                TRAIN_GFLOP: st.floats(0, 100),
            }
        )
    )
    record = _metric_record(metrics)
    if record is not None and not draw(rarely()):
        content[METRICS] = record
    info = draw(client_record())
    if info is not None:
        content[CLIENT] = info
    if draw(rarely()):
        content[draw(st.sampled_from(["padding", SCORES, "config"]))] = ArrayRecord({"x": Array(np.zeros(8))})
    return RecordDict(content)


def _honest_updates() -> list[PartialUpdate]:
    """Two honest clients' updates of layers 0..2 (partitions 0 and 2)."""
    return [
        PartialUpdate(
            f"client/{p}",
            {key: (value * np.float32(1 + 0.01 * p) + np.float32(0.1 * p)) for key, value in GLOBAL.items()},
            8 * (p + 1),
        )
        for p in (0, 2)
    ]


def _checked_train(content: RecordDict) -> PartialUpdate:
    """What the strategy does to a train reply: records, client record, then the reply itself."""
    check_records(content, "train")
    check_client_info(content, NODE, {NODE: ClientInfo("client/1", 1, "vqa")}, {}, required=False, num_partitions=3)
    return check_train_reply(content, "client/1", ASSIGNED_KEYS, UNITS.all_keys(), GLOBAL, QUERIED)


@MANY
@given(
    content=train_reply(),
    share=st.sampled_from([1.0, 0.5]),
    norm=st.sampled_from([0.0, 4.0]),
    robust=st.sampled_from(["", "median", "trimmed-mean"]),
)
def test_a_train_reply_is_accepted_finite_or_rejected_by_a_named_check(content, share, norm, robust):
    try:
        update = _checked_train(content)
    except Rejected as error:
        assert error.check in CHECKS and error.detail
        event(f"rejected [{error.check}]")
        return
    event("accepted")
    assert set(update.state) == set(ASSIGNED_KEYS)
    updates = [*_honest_updates(), update]
    if norm:
        updates = [bound_update(u, GLOBAL, UNITS.names, norm)[0] for u in updates]
    new = aggregate_layers(GLOBAL, updates, max_share=share, robust=robust)
    for key, value in new.items():
        assert value.dtype == GLOBAL[key].dtype and value.shape == GLOBAL[key].shape
        assert np.all(np.isfinite(value)), key
    losses = [1.0, 0.5, float(content[METRICS][TRAIN_LOSS])]
    shares = capped_shares([u.num_examples for u in updates], share)
    assert np.isfinite(sum(loss * s for loss, s in zip(losses, shares)))


@st.composite
def query_reply(draw) -> RecordDict:
    content = {}
    kind = draw(mostly("valid", "missing", "as-config", "as-arrays"))
    if kind == "valid":
        length = draw(mostly(3, 0, 2, 4))
        score_list = st.one_of(
            *[st.lists(st.floats(0, 1), min_size=length, max_size=length)] * 3,
            st.lists(st.one_of(st.floats(0, 1), floats), min_size=length, max_size=length),
        )
        values = draw(
            metric_values(
                {NORMALIZED: score_list, RAW: score_list, NUM_EXAMPLES: st.just(QUERIED), SECONDS: st.floats(0, 5)}
            )
        )
        record = _metric_record(values)
        if record is not None:
            content[SCORES] = record
    elif kind == "as-config":
        content[SCORES] = ConfigRecord({NORMALIZED: ["0.5", "0.5", "0"], RAW: "x"})
    elif kind == "as-arrays":
        content[SCORES] = ArrayRecord({"scores": Array(np.ones(3))})
    info = draw(client_record())
    if info is not None:
        content[CLIENT] = info
    if draw(rarely()):
        content["padding"] = ConfigRecord({"x": "y"})
    return RecordDict(content)


HONEST_SCORES = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])


@MANY
@given(content=query_reply())
def test_a_query_reply_is_usable_scores_or_rejected_by_a_named_check(content):
    try:
        check_records(content, "query")
        check_client_info(content, NODE, {}, {}, num_partitions=3)
        values = check_score_values(parse_scores_reply(content), 3, 2)
    except Rejected as error:
        assert error.check in CHECKS and error.detail
        event(f"rejected [{error.check}]")
        return
    event("accepted")
    assert values.shape == (3,) and np.all(np.isfinite(values)) and np.all(values >= 0)
    assert abs(values.sum() - 1.0) < 1e-9
    matrix = np.vstack([HONEST_SCORES, values])
    result = select(matrix, [1, 2, 1], algorithm="exact", seed=0)
    assert [int(mask.sum()) for mask in result.masks] == [1, 2, 1]


@settings(max_examples=40, deadline=None, database=None)
@given(
    scores=st.lists(
        st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1e300, 1e308, 1.7e308, 5e-324])), min_size=3, max_size=3
    )
)
def test_accepted_scores_never_crash_the_default_selector(scores):
    """nsga2 (the default) on any scores the checks let through, including sums that overflow."""
    from f3ocus_flower.protocol import ScoresReply

    try:
        values = check_score_values(ScoresReply(tuple(scores), (1.0, 1.0, 1.0), QUERIED, 0.1), 3, 2)
    except Rejected as error:
        assert error.check == "scores"
        event("rejected [scores]")
        return
    event("accepted")
    result = select(np.vstack([HONEST_SCORES, values]), [1, 2, 1], algorithm="nsga2", seed=0)
    assert [int(mask.sum()) for mask in result.masks] == [1, 2, 1]


@st.composite
def evaluate_reply(draw) -> RecordDict:
    content = {}
    score = st.floats(0, 1)
    values = draw(
        metric_values(
            {LOSS: st.floats(0, 10), METRIC: score, "accuracy": score, "f1": score, NUM_EXAMPLES: st.integers(1, 10**9)}
        )
    )
    record = _metric_record(values)
    if record is not None and not draw(rarely()):
        content[METRICS] = record
    info = draw(client_record())
    if info is not None:
        content[CLIENT] = info
    if draw(rarely()):
        content[ARRAYS] = ArrayRecord({"x": Array(np.zeros(4))})
    return RecordDict(content)


@MANY
@given(contents=st.lists(evaluate_reply(), min_size=1, max_size=3), share=st.sampled_from([1.0, 0.5]))
def test_evaluate_replies_give_finite_averaged_metrics(contents, share):
    evaluations = {"client/0": {LOSS: 1e30, METRIC: 0.5, "accuracy": 0.5, NUM_EXAMPLES: 1e9}}
    for index, content in enumerate(contents):
        try:
            check_records(content, "evaluate")
            check_client_info(content, NODE, {}, {}, num_partitions=3)
            evaluations[f"client/{index + 1}"] = check_evaluate_reply(content)
            event("accepted")
        except Rejected as error:
            assert error.check in CHECKS and error.detail
            event(f"rejected [{error.check}]")
    row = metrics_row(RoundRecord(1), evaluations, str, max_share=share)
    for key in ("metric", "loss", "accuracy", "f1"):
        assert row.get(key) is None or np.isfinite(row[key]), key
    json.dumps(row, allow_nan=False)  # metrics.jsonl never holds NaN or Infinity


# ---------------------------------------------------------------- through the strategy


@pytest.fixture(scope="module")
def strategy_settings():
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update(
        {"selection.budget": "1,2,1", "round-timeout": TIMEOUT, "selection.algorithm": "exact", "num-server-rounds": 2}
    )
    return parse_run_config(config, SCORERS, ALGORITHMS)


@pytest.fixture(scope="module")
def train_reference(strategy_settings, tmp_path_factory):
    return dropped(tmp_path_factory.mktemp("reference"), strategy_settings, MessageType.TRAIN, 1)


@FEW
@given(data=st.data())
def test_a_generated_train_reply_through_the_strategy(data, strategy_settings, train_reference, tmp_path_factory):
    """Client 1's round-1 train reply replaced by a generated one: the run finishes; rejected, it is
    logged by client and check and the global units and rows are bit-identical to the run without
    it; accepted, the global units stay finite."""
    assigned = train_reference.rows[1]["assignment"]["client/1"]
    content = data.draw(train_reply(tuple(UNITS.keys_of(assigned))))
    assume(CLIENT not in content or isinstance(content[CLIENT], ConfigRecord))

    def train(msg: Message, context):
        reply = HANDLERS[MessageType.TRAIN](msg, context)
        if msg.metadata.dst_node_id == NODE and _round(msg) == 1:
            return Message(content, reply_to=msg)
        return reply

    handler = logging.getLogger("flwr")
    records: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = records.append
    handler.addHandler(capture)
    try:
        result = run(tmp_path_factory.mktemp("generated"), strategy_settings, {**HANDLERS, MessageType.TRAIN: train})
    finally:
        handler.removeHandler(capture)
    assert [row["round"] for row in result.rows] == [0, 1, 2]
    assert all(np.all(np.isfinite(value)) for value in result.strategy.state.global_units.values())
    failed = [f for f in result.rows[1]["failed"] if f["phase"] == MessageType.TRAIN]
    event(f"rejected [{failed[0]['reason'].split(':')[0]}]" if failed else "accepted")
    if failed:
        (rejection,) = failed
        check = rejection["reason"].split(":")[0]
        assert check in CHECKS and rejection["client"] == "client/1"
        assert any(f"client client/1 rejected [{check}]" in r.getMessage() for r in records)
        assert result.state() == train_reference.state() and result.outcome() == train_reference.outcome()


def test_the_generated_replies_cover_every_record_of_every_phase():
    """The generators above draw each record the protocol defines for a reply of its phase."""
    assert set(REPLY_RECORDS["train"]) == {ARRAYS, METRICS, CLIENT}
    assert set(REPLY_RECORDS["query"]) == {SCORES, CLIENT}
    assert set(REPLY_RECORDS["evaluate"]) == {METRICS, CLIENT, SCORES}
