"""A Grid that collects replies as promptly in a deployment as in the simulation.

Flower 1.42's deployment Grid (``flwr/superlink/grid/http_grid.py``) checks for replies every 3 s in
``send_and_receive``, and its first check comes right after sending, when no reply can be there yet:
every message exchange of a round is rounded up to a multiple of 3 s. The simulation's in-memory
Grid checks every 0.1 s. :class:`PromptGrid` wraps either and checks every :data:`POLL_SECONDS`
with the wrapped Grid's own ``pull_messages`` (a small request to the SuperLink that returns only
the replies that are complete); everything else is the wrapped Grid's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

if TYPE_CHECKING:
    from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
    from flwr.supercore.run import Run

#: Seconds between checks for replies (the simulation's in-memory Grid uses 0.1 s).
POLL_SECONDS = 0.1


class PromptGrid(Grid):
    """``grid`` with a ``send_and_receive`` that checks for replies every ``poll`` seconds."""

    def __init__(self, grid: Grid, poll: float = POLL_SECONDS) -> None:
        self._grid = grid
        self.poll = poll

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages``, then collect their replies until all came or ``timeout`` seconds passed
        (the same contract as Flower's: the replies that came, in the order they came)."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            came = list(self.pull_messages(waiting))
            replies.extend(came)
            waiting.difference_update(reply.metadata.reply_to_message_id for reply in came)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll)
        return replies


def prompt(grid: Grid) -> Grid:
    """``grid`` as a :class:`PromptGrid` if it is a Flower ``Grid``; any other object with a
    ``send_and_receive`` of its own (a test's in-process stand-in) is returned as it is."""
    return PromptGrid(grid) if isinstance(grid, Grid) else grid
