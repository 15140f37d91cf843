"""FedAvg's ClientApp, as ``flwr new`` writes one: ``train`` loads the global arrays, trains every
layer's units for the configured local epochs and replies with them; ``evaluate`` loads them and
evaluates. Same model (the run's base checkpoint with its PEFT units), same data partition and same
loops as F3OCUS's client (:mod:`f3ocus_core`); no layer scores, no selection, no warm worker, no
personal head kept between messages (each message starts from a fresh head): it measures time."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.node_config import parse_node_config
from f3ocus_core.config import parse_run_config
from f3ocus_core.data.cache import cached_client_data
from f3ocus_core.models import set_answer_head
from f3ocus_core.peft_units import get_state, set_state, set_trainable
from f3ocus_core.pretrain import default_cache_dir
from f3ocus_core.training import evaluate, make_collate, train
from f3ocus_flower.model_setup import model_path, set_up_model
from f3ocus_flower.protocol import record_to_state, state_to_record

app = ClientApp()


def _load(msg: Message, context: Context):
    settings = parse_run_config(context.run_config)
    node = parse_node_config(context.node_config)
    data = cached_client_data(settings.data, node.partition_id, node.num_partitions, default_cache_dir() / "data")
    setup = set_up_model(model_path(settings), settings.peft)
    set_answer_head(setup.model, data.labels, settings.seed)
    set_state(setup.model, record_to_state(msg.content["arrays"]))
    collate = make_collate(setup.processor, data.labels, multi_label=data.kind == "multilabel")
    return settings, data, setup, collate


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train every layer's units on the local data; reply with them and the example count."""
    settings, data, setup, collate = _load(msg, context)
    set_trainable(setup.model, setup.units, list(range(len(setup.units.names))), head=True)
    result = train(setup.model, data.train, collate, settings.train, seed=settings.seed, device=torch.device("cpu"))
    arrays: ArrayRecord = state_to_record(get_state(setup.model, setup.units.all_keys()))
    metrics = MetricRecord({"train_loss": float(result["loss"]), "num-examples": len(data.train)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the global arrays on the local test part."""
    settings, data, setup, collate = _load(msg, context)
    metrics = evaluate(
        setup.model,
        data.test,
        collate,
        data.kind,
        settings.eval_batch_size,
        device=torch.device("cpu"),
        precision=settings.train.precision,
        answer_mode=settings.eval_answer_mode,
    )
    return Message(
        RecordDict({"metrics": MetricRecord({"accuracy": float(metrics["metric"]), "num-examples": len(data.test)})}),
        reply_to=msg,
    )
