"""The records both apps exchange survive the trip through Flower's record types unchanged."""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from f3ocus_flower.protocol import (
    LAYERS,
    SERVER_ROUND,
    ClientInfo,
    ScoresReply,
    bytes_list,
    bytes_of,
    record_to_state,
    round_config,
    scalar,
    scalar_list,
    state_to_record,
)


def test_a_state_round_trips_through_an_array_record_with_its_dtypes_and_shapes():
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3).T, "b": np.array([1, 2], dtype=np.int64)}
    back = record_to_state(state_to_record(state))
    assert list(back) == ["a", "b"]
    for key in state:
        assert back[key].dtype == state[key].dtype and np.array_equal(back[key], state[key])


def test_client_info_round_trips_with_and_without_labels():
    for info in (ClientInfo("vqa-rad/0", 0, "vqa", ("yes", "no")), ClientInfo("xray/3", 3, "multilabel")):
        assert ClientInfo.from_record(info.to_record()) == info


def test_scores_reply_round_trips():
    reply = ScoresReply((0.25, 0.75), (1.5, 4.5), 8, 0.5)
    assert ScoresReply.from_record(reply.to_record()) == reply


def test_the_round_config_carries_layers_only_for_train():
    assert dict(round_config(3)) == {SERVER_ROUND: 3}
    assert dict(round_config(3, [2, 0])) == {SERVER_ROUND: 3, LAYERS: [2, 0]}


def test_typed_reads_of_a_record_return_the_value_or_refuse_the_wrong_shape():
    record = ConfigRecord({"n": 3, "ids": [1, 2], "key": b"k", "keys": [b"a", b"b"], "names": ["a"]})
    assert scalar(record["n"]) == 3 and scalar_list(record["ids"]) == [1, 2]
    assert bytes_of(record["key"]) == b"k" and bytes_list(record["keys"]) == [b"a", b"b"]
    with pytest.raises(TypeError, match="one number or string"):
        scalar(record["ids"])
    with pytest.raises(TypeError, match="a list"):
        scalar_list(record["n"])
    with pytest.raises(TypeError, match="bytes"):
        bytes_of(record["n"])
    with pytest.raises(TypeError, match="list of bytes"):
        bytes_list(record["names"])
