"""Warm clients: a one-message process hands messages to one long-lived worker per node, which keeps
its state between messages; replies, context state and errors come back as if handled in place.

The worker runs a small ClientApp written into a temporary app folder (the worker imports
``client_app.app`` from the app folder first, as it does from a run's installed FAB), so these
tests take seconds and need no model.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from client_app.worker import forward, socket_path
from tests.conftest import ROOT

FAKE_APP = """
import os
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
CALLS = []


@app.query()
def query(msg, context):
    if msg.content.config_records["config"]["fail"]:
        raise ValueError("data.path: no such folder")
    CALLS.append(1)
    total = float(msg.content.array_records["arrays"].to_numpy_ndarrays()[0].sum())
    context.state["seen"] = MetricRecord({"calls": len(CALLS)})
    return Message(RecordDict({"reply": MetricRecord({"pid": os.getpid(), "calls": len(CALLS), "sum": total})}),
                   reply_to=msg)
"""


@pytest.fixture()
def app_dir(tmp_path, monkeypatch):
    """A temporary app folder with a ``client_app.app`` of its own; its worker is stopped after."""
    (tmp_path / "client_app").mkdir()
    (tmp_path / "client_app" / "__init__.py").write_text("")
    (tmp_path / "client_app" / "app.py").write_text(FAKE_APP)
    # The worker runs from the app folder (`python -m client_app.worker`), as from a FAB: this checkout's.
    (tmp_path / "client_app" / "worker.py").write_text((ROOT / "client_app" / "worker.py").read_text())
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("F3OCUS_WARM_IDLE", "30")
    yield tmp_path
    pids = []
    try:
        pids.append(_call(str(tmp_path), 7)[0].content.metric_records["reply"]["pid"])
    finally:
        for pid in pids:
            os.kill(int(pid), signal.SIGTERM)


def _message(fail: bool = False, value: float = 1.0) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord([np.full(4, value, dtype=np.float32)]), "config": ConfigRecord({"fail": fail})}
    )
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=1,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type="query",
    )
    message = Message(content=content, metadata=metadata)
    message.metadata.__dict__["_message_id"] = message.object_id
    return message


def _call(app_dir: str, node_id: int, fail: bool = False, value: float = 1.0) -> tuple[Message, Context, Message]:
    message = _message(fail, value)
    context = Context(run_id=1, node_id=node_id, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    return forward(message, context, app_dir), context, message


def test_messages_of_a_node_reach_one_worker_that_keeps_its_state(app_dir):
    first, context, message = _call(str(app_dir), 7, value=2.0)
    reply = first.content.metric_records["reply"]
    assert reply["sum"] == 8.0 and reply["pid"] != os.getpid()
    assert first.metadata.reply_to_message_id == message.metadata.message_id
    assert first.metadata.dst_node_id == message.metadata.src_node_id
    assert context.state.metric_records["seen"]["calls"] == reply["calls"]

    second = _call(str(app_dir), 7)[0].content.metric_records["reply"]
    assert second["pid"] == reply["pid"], "the same worker served both messages"
    assert second["calls"] == reply["calls"] + 1, "the worker kept its memory between messages"
    assert socket_path(str(app_dir), 7).exists()


def test_another_node_gets_its_own_worker(app_dir):
    pid_7 = _call(str(app_dir), 7)[0].content.metric_records["reply"]["pid"]
    other = _call(str(app_dir), 8)[0].content.metric_records["reply"]
    try:
        assert other["pid"] != pid_7 and other["calls"] == 1
    finally:
        os.kill(int(other["pid"]), signal.SIGTERM)


def test_an_error_in_the_worker_is_raised_in_the_message_process_and_the_worker_lives_on(app_dir):
    pid = _call(str(app_dir), 7)[0].content.metric_records["reply"]["pid"]
    with pytest.raises(RuntimeError, match="ValueError in the warm worker: data.path: no such folder"):
        _call(str(app_dir), 7, fail=True)
    assert _call(str(app_dir), 7)[0].content.metric_records["reply"]["pid"] == pid


def test_a_dead_worker_is_replaced_by_the_next_message(app_dir):
    pid = _call(str(app_dir), 7)[0].content.metric_records["reply"]["pid"]
    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.2)
    again = _call(str(app_dir), 7)[0].content.metric_records["reply"]
    assert again["pid"] != pid and again["calls"] == 1
