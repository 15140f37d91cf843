"""PromptGrid: collects every reply of a message exchange, checking at its own short interval, and
stops at the timeout with the replies that came."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from server_app.grid import PromptGrid


class SlowGrid:
    """Replies to message ``i`` become available ``delays[i]`` seconds after sending."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pulls = 0

    def push_messages(self, messages):
        self.sent = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic() - self.sent
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
            for i, delay in enumerate(self.delays)
            if f"m{i}" in set(message_ids) and delay <= now
        ]


def test_every_reply_is_collected_soon_after_it_comes():
    slow = SlowGrid([0.3, 0.5])
    started = time.monotonic()
    replies = PromptGrid(slow, poll=0.05).send_and_receive(["a", "b"], timeout=10)
    elapsed = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 0.5 <= elapsed < 1.0, "Flower's own deployment Grid would take 3 s here"
    assert slow.pulls >= 5


@pytest.mark.parametrize("timeout", [0.3, 0.0])
def test_the_timeout_returns_the_replies_that_came(timeout):
    slow = SlowGrid([0.0, 60.0])
    started = time.monotonic()
    replies = PromptGrid(slow, poll=0.05).send_and_receive(["a", "b"], timeout=timeout)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert time.monotonic() - started < timeout + 0.5


def test_everything_else_is_the_wrapped_grids():
    wrapped = SimpleNamespace(get_node_ids=lambda: [3, 4], run="the run")
    grid = PromptGrid(wrapped)
    assert list(grid.get_node_ids()) == [3, 4] and grid.run == "the run"


def test_only_flower_grids_are_wrapped():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from server_app.grid import prompt

    stand_in = SimpleNamespace(send_and_receive=lambda messages, timeout=None: [])
    assert prompt(stand_in) is stand_in
    assert isinstance(prompt(InMemoryGrid.__new__(InMemoryGrid)), PromptGrid)
