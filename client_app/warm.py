"""The ClientApp Flower loads (``[tool.flwr.app.components] clientapp``): a thin front of
:mod:`client_app.app`.

In a deployment, where Flower runs every message in a fresh ``flwr-clientapp`` process, it hands
the message to the node's warm worker (:mod:`client_app.worker`), which keeps the imports, the
model and the data in memory between messages. Anywhere else (the simulation, whose client
processes live for the whole run; tests) it calls :mod:`client_app.app` in this process. This
module imports nothing heavy, so a one-message process starts in well under a second.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.worker import forward, is_one_message_process

app = ClientApp()

#: The folder holding this app's code (for a deployment: the run's FAB as Flower installed it).
APP_DIR = str(Path(__file__).resolve().parents[1])


def _run(message: Message, context: Context) -> Message:
    if is_one_message_process():
        return forward(message, context, APP_DIR)
    from client_app.app import app as full_app

    return full_app(message, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Score every layer (:func:`client_app.app.query`)."""
    return _run(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the assigned layers (:func:`client_app.app.train_fn`)."""
    return _run(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global units (:func:`client_app.app.evaluate_fn`)."""
    return _run(msg, context)
