"""A node's --node-config: parsed and checked once per message; a bad one fails only that node."""

from __future__ import annotations

import pytest
from flwr.app import MessageType

from client_app.node_config import NODE_CONFIG_KEYS, NodeSettings, parse_node_config
from tests.inprocess_grid import run_server_app


def test_known_keys_parse_and_empty_optionals_mean_the_run_default():
    node = parse_node_config(
        {"partition-id": 1, "num-partitions": 3, "data-path": "/data/h1", "device": "cuda:0", "state-dir": ""}
    )
    assert node == NodeSettings(1, 3, "/data/h1", "cuda:0", None)
    assert parse_node_config({"partition-id": "0", "num-partitions": "2"}) == NodeSettings(0, 2)


@pytest.mark.parametrize(
    ("node_config", "key"),
    [
        ({"partition-id": 0, "num-partitions": 2, "devcie": "cpu"}, "devcie"),
        ({"num-partitions": 2}, "partition-id"),
        ({"partition-id": 0}, "num-partitions"),
        ({"partition-id": "first", "num-partitions": 2}, "partition-id"),
        ({"partition-id": 1.5, "num-partitions": 2}, "partition-id"),
        ({"partition-id": 2, "num-partitions": 2}, "partition-id"),
        ({"partition-id": -1, "num-partitions": 2}, "partition-id"),
    ],
)
def test_bad_node_configs_name_the_key(node_config, key):
    with pytest.raises(ValueError, match=key) as error:
        parse_node_config(node_config)
    if key == "devcie":
        assert all(known in str(error.value) for known in NODE_CONFIG_KEYS)


@pytest.mark.parametrize(("bad", "key"), [({"devcie": "cpu"}, "devcie"), ({"device": "cuda:7"}, "device")])
def test_a_node_with_a_bad_node_config_is_logged_as_failed_and_the_run_goes_on(small_run_config, bad, key):
    """Partition 1 has a misspelt key or a GPU it lacks: each of its messages fails with an error naming
    the key; the server records it as failed every round and the other clients finish the run."""

    def misconfigure(handler):
        def wrapped(msg, context):
            if context.node_config["partition-id"] == 1:
                context.node_config.update(bad)
            return handler(msg, context)

        return wrapped

    config = dict(small_run_config, **{"num-server-rounds": 1})
    wrap = {kind: misconfigure for kind in (MessageType.TRAIN, MessageType.EVALUATE)}
    _, rows = run_server_app(config, num_nodes=3, wrap=wrap)
    failed = [f for row in rows for f in row["failed"]]
    assert failed and all(key in f["reason"] for f in failed)
    assert {f["client"] for f in failed} == {"node-2"}  # it never got to say its name
    assert rows[0]["failed"] and rows[1]["failed"]  # the starting evaluation and round 1
    assert len(rows) == 2 and rows[1]["bytes_up"] and len(rows[1]["bytes_up"]) == 2
