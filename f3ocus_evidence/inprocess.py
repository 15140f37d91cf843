"""Run the ServerApp over in-process clients: the project's own ``server_app.app.main`` driving the
handlers of ``client_app.app`` through a Grid that delivers each message by a function call.

Nothing here replaces a step of the apps: the server's strategy, the reply checks, the clients'
scoring, training and evaluation are the same code ``flwr run`` executes; only the transport (Flower's
SuperLink and SuperNodes) is left out. That saves the 30-60 s a ``flwr run`` spends starting up,
which is what makes a grid of dozens of runs (:mod:`f3ocus_evidence.compare`) and strategy tests
affordable on a laptop. Each node has its own Context, whose state persists across rounds as on a
SuperNode.

Public API: :class:`InProcessGrid`, :func:`client_handlers`, :func:`run_server_app` and
:func:`run_on_grid`. A benchmark that spies on or tampers with the clients passes its own handlers
(the ClientApp's, decorated); the tests' fault injection (failing and late nodes) is a subclass of the
grid in ``tests/inprocess_grid.py``, not part of this package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, RecordDict


class InProcessGrid:
    """Nodes ``1..num_nodes`` with partition ids ``0..num_nodes-1``, each answering by a function call.

    Parameters
    ----------
    run_config : dict
        The run config every node sees.
    handlers : dict[str, Callable]
        Message type -> client function ``(msg, context) -> Message`` (:func:`client_handlers`: the
        project's ClientApp).
    num_nodes : int
        How many clients.
    state_dir : str | None
        The nodes' ``state-dir`` node config (where a client keeps its head between rounds);
        ``None``: the default under ``$FLWR_HOME``.

    Attributes
    ----------
    calls : list[tuple[int, str]]
        ``(node id, message type)`` of every message delivered, in order.
    contexts : dict[int, Context]
        Each node's Context (its ``state`` persists across rounds).
    """

    def __init__(
        self, run_config: dict, handlers: dict[str, Callable], num_nodes: int, state_dir: str | None = None
    ) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        # What the runtime sets in a ServerApp process before messages can be created.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.handlers = handlers
        self.calls: list[tuple[int, str]] = []
        extra = {"state-dir": state_dir} if state_dir else {}
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": node - 1, "num-partitions": num_nodes, **extra},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for node in range(1, num_nodes + 1)
        }

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies: list[Message] = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.calls.append((node, msg.metadata.message_type))
            replies.extend(self.deliver(msg, node, timeout))
        return replies

    def handle(self, msg: Message, node: int) -> Message:
        """Node ``node``'s handler for ``msg``'s message type run on ``msg`` in that node's Context."""
        return self.handlers[msg.metadata.message_type](msg, self.contexts[node])

    def deliver(self, msg: Message, node: int, timeout: float | None) -> list[Message]:
        """The replies ``send_and_receive`` returns for ``msg``: the handler's reply, or an error reply
        when it raises (as Flower's runtime makes of a ClientApp exception). ``timeout`` is
        ``send_and_receive``'s; every reply arrives in time here."""
        try:
            reply = self.handle(msg, node)
        except Exception as error:  # the runtime turns a ClientApp exception into an error reply
            reply = Message(Error(code=0, reason=f"{type(error).__name__}: {error}"), reply_to=msg)
        return [reply]


def client_handlers() -> dict[str, Callable]:
    """The ClientApp's handler per message type (``train``, ``evaluate``, and ``query`` for a
    resumed run's first round)."""
    from client_app import app as client

    return {
        MessageType.QUERY: client.query,
        MessageType.TRAIN: client.train_fn,
        MessageType.EVALUATE: client.evaluate_fn,
    }


def run_on_grid(grid: InProcessGrid, config: dict) -> list[dict]:
    """Run the ServerApp with run config ``config`` over ``grid``; return its ``metrics.jsonl`` rows.

    ``config`` is a complete run config (``[tool.flwr.app.config]`` with overrides) whose
    ``output-dir`` and ``run-name`` name the run folder.
    """
    from server_app.app import main

    # A stand-in with Grid's get_node_ids and send_and_receive only, not Flower's Grid ABC: the app's
    # prompt() passes such an object through untouched (server_app/grid.py).
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))  # type: ignore[arg-type]
    out = f"{config['output-dir']}/{config['run-name']}"
    return [json.loads(line) for line in Path(f"{out}/metrics.jsonl").read_text().splitlines()]


def run_server_app(
    config: dict, num_nodes: int, handlers: dict[str, Callable] | None = None, state_dir: str | None = None
) -> tuple[InProcessGrid, list[dict]]:
    """Run the ServerApp over ``num_nodes`` in-process clients; return the grid and the metrics rows.

    ``handlers``: the clients' handler per message type (default :func:`client_handlers`; a
    benchmark passes them decorated, to record or alter replies); ``state_dir`` as in
    :class:`InProcessGrid`; ``config`` as in :func:`run_on_grid`.
    """
    grid = InProcessGrid(config, handlers or client_handlers(), num_nodes, state_dir=state_dir)
    return grid, run_on_grid(grid, config)
