"""Run the ServerApp over in-process clients: the project's own ``server_app.app.main`` driving the
handlers of ``client_app.app`` through a Grid that delivers each message by a function call.

Nothing here replaces a step of the apps: the server's strategy, the reply checks, the clients'
scoring, training and evaluation are the same code ``flwr run`` executes; only the transport (Flower's
SuperLink and SuperNodes) is left out. That saves the 30-60 s a ``flwr run`` spends starting up,
which is what makes a grid of dozens of runs (:mod:`f3ocus_flower.compare`) and strategy tests
affordable on a laptop. Each node has its own Context, whose state persists across rounds as on a
SuperNode.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, RecordDict

from f3ocus_flower.protocol import CONFIG, SERVER_ROUND, scalar


class InProcessGrid:
    """Nodes ``1..num_nodes`` with partition ids ``0..num_nodes-1``.

    Parameters
    ----------
    run_config : dict
        The run config every node sees.
    handlers : dict[str, Callable]
        Message type -> client function ``(msg, context) -> Message``.
    num_nodes : int
        How many clients.
    fail : Callable[[int, str, int], bool] | None
        ``fail(node_id, message_type, call_number)``: make that call raise, to test failures.
    delay : Callable[[int, str, int], float] | None
        ``delay(node_id, message_type, server_round)``: seconds that node's reply takes on top of its
        work (simulated, nothing sleeps). The client still handles the message (its state moves on,
        as a slow SuperNode's does), but a reply slower than ``send_and_receive``'s ``timeout`` is not
        returned, as Flower's Grid returns only the replies that arrived in time.
    state_dir : str | None
        The nodes' ``state-dir`` node config (where a client keeps its head between rounds);
        ``None``: the default under ``$FLWR_HOME``.
    """

    def __init__(self, run_config: dict, handlers: dict[str, Callable], num_nodes: int,
                 fail: Callable[[int, str, int], bool] | None = None,
                 delay: Callable[[int, str, int], float] | None = None,
                 state_dir: str | None = None) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        # What the runtime sets in a ServerApp process before messages can be created.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.handlers = handlers
        self.fail = fail
        self.delay = delay
        self.late: list[tuple[int, str, int]] = []
        self.calls: list[tuple[int, str]] = []
        extra = {"state-dir": state_dir} if state_dir else {}
        self.contexts = {
            node: Context(run_id=1, node_id=node,
                          node_config={"partition-id": node - 1, "num-partitions": num_nodes, **extra},
                          state=RecordDict(), run_config=dict(run_config))
            for node in range(1, num_nodes + 1)
        }

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies: list[Message] = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            kind = msg.metadata.message_type
            self.calls.append((node, kind))
            try:
                if self.fail and self.fail(node, kind, len(self.calls)):
                    raise RuntimeError(f"injected failure on node {node} ({kind})")
                reply = self.handlers[kind](msg, self.contexts[node])
            except Exception as error:  # the runtime turns a ClientApp exception into an error reply
                reply = Message(Error(code=0, reason=f"{type(error).__name__}: {error}"), reply_to=msg)
            in_config = CONFIG in msg.content
            server_round = int(scalar(msg.content.config_records[CONFIG][SERVER_ROUND])) if in_config else -1
            if self.delay and timeout is not None and self.delay(node, kind, server_round) > timeout:
                self.late.append((node, kind, server_round))
                continue
            replies.extend(reply if isinstance(reply, list) else [reply])
        return replies


def client_handlers() -> dict[str, Callable]:
    """The ClientApp's handler per message type (``train``, ``evaluate``, and ``query`` for a
    resumed run's first round)."""
    from client_app import app as client

    return {MessageType.QUERY: client.query, MessageType.TRAIN: client.train_fn,
            MessageType.EVALUATE: client.evaluate_fn}


def run_server_app(config: dict, num_nodes: int, fail: Callable[[int, str, int], bool] | None = None,
                   wrap: dict[str, Callable[[Callable], Callable]] | None = None,
                   delay: Callable[[int, str, int], float] | None = None,
                   state_dir: str | None = None) -> tuple[InProcessGrid, list[dict]]:
    """Run the ServerApp over ``num_nodes`` in-process clients; return the grid and the metrics rows.

    ``config`` is a complete run config (``[tool.flwr.app.config]`` with overrides) whose
    ``output-dir`` and ``run-name`` name the run folder. ``wrap`` maps a message type to a decorator
    of that client handler (to spy on or tamper with replies; a wrapped handler may return a list of
    messages, to inject extra replies); ``fail``, ``delay`` and ``state_dir`` are passed to
    :class:`InProcessGrid`.
    """
    from server_app.app import main

    handlers = client_handlers()
    for kind, decorate in (wrap or {}).items():
        handlers[kind] = decorate(handlers[kind])
    grid = InProcessGrid(config, handlers, num_nodes, fail=fail, delay=delay, state_dir=state_dir)
    # A stand-in with Grid's get_node_ids and send_and_receive only, not Flower's Grid ABC: the app's
    # prompt() passes such an object through untouched (f3ocus_flower/grid.py).
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))  # type: ignore[arg-type]
    out = f"{config['output-dir']}/{config['run-name']}"
    rows = [json.loads(line) for line in Path(f"{out}/metrics.jsonl").read_text().splitlines()]
    return grid, rows
