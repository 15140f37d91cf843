"""The in-process Grid of :mod:`f3ocus_evidence.inprocess` with the tests' fault injection: nodes whose
handler fails, replies that arrive too late, handlers decorated to spy on or tamper with replies
(a decorated handler may return a list of messages, to inject extra replies)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Message

from f3ocus_evidence import inprocess
from f3ocus_evidence.inprocess import client_handlers, run_on_grid
from f3ocus_flower.protocol import CONFIG, SERVER_ROUND

__all__ = ["InProcessGrid", "client_handlers", "run_server_app"]


class InProcessGrid(inprocess.InProcessGrid):
    """:class:`f3ocus_evidence.inprocess.InProcessGrid` with faults.

    Parameters
    ----------
    fail : Callable[[int, str, int], bool] | None
        ``fail(node_id, message_type, call_number)``: make that call raise (an error reply).
    delay : Callable[[int, str, int], float] | None
        ``delay(node_id, message_type, server_round)``: seconds that node's reply takes on top of its
        work (simulated, nothing sleeps). The client still handles the message (its state moves on,
        as a slow SuperNode's does), but a reply slower than ``send_and_receive``'s ``timeout`` is not
        returned, as Flower's Grid returns only the replies that arrived in time; it is noted in
        ``late`` as ``(node, message type, server round)``.
    """

    def __init__(
        self,
        run_config: dict,
        handlers: dict[str, Callable],
        num_nodes: int,
        fail: Callable[[int, str, int], bool] | None = None,
        delay: Callable[[int, str, int], float] | None = None,
        state_dir: str | None = None,
    ) -> None:
        super().__init__(run_config, handlers, num_nodes, state_dir=state_dir)
        self.fail = fail
        self.delay = delay
        self.late: list[tuple[int, str, int]] = []

    def handle(self, msg: Message, node: int) -> Message:
        kind = msg.metadata.message_type
        if self.fail and self.fail(node, kind, len(self.calls)):
            raise RuntimeError(f"injected failure on node {node} ({kind})")
        return super().handle(msg, node)

    def deliver(self, msg: Message, node: int, timeout: float | None) -> list[Message]:
        replies = [
            m for reply in super().deliver(msg, node, timeout) for m in (reply if isinstance(reply, list) else [reply])
        ]
        kind = msg.metadata.message_type
        server_round = int(msg.content.config_records[CONFIG][SERVER_ROUND]) if CONFIG in msg.content else -1
        if self.delay and timeout is not None and self.delay(node, kind, server_round) > timeout:
            self.late.append((node, kind, server_round))
            return []
        return replies


def run_server_app(
    config: dict, num_nodes: int, fail=None, wrap=None, delay=None, state_dir: str | None = None
) -> tuple[InProcessGrid, list[dict]]:
    """:func:`f3ocus_evidence.inprocess.run_server_app` with faults: ``wrap`` maps a message type to a
    decorator of that client handler; ``fail`` and ``delay`` as in :class:`InProcessGrid`."""
    handlers = client_handlers()
    for kind, decorate in (wrap or {}).items():
        handlers[kind] = decorate(handlers[kind])
    grid = InProcessGrid(config, handlers, num_nodes, fail=fail, delay=delay, state_dir=state_dir)
    return grid, run_on_grid(grid, config)
