"""Flower ClientApp: each message becomes calls of ``f3ocus_core``; nothing else happens here.

- ``query``: load the global units, score every layer on a local batch, reply with the scores.
- ``train``: train only the assigned layers' units (and the personal head), reply with those units.
- ``evaluate``: load the global units, evaluate on the local test part.

The client keeps two things in ``context.state`` between messages: the global units of the current
round (received with ``query``) and its personal answer head.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from f3ocus_core.config import RunSettings, parse_run_config
from f3ocus_core.data import ClientData
from f3ocus_core.data.tasks import DataSettings, load_client_data
from f3ocus_core.importance import SCORERS, score_layers
from f3ocus_core.layers import LayerMap, layer_map_for
from f3ocus_core.models import load_vqa_model, set_answer_head
from f3ocus_core.peft_units import PeftSettings, UnitMap, attach_units, get_state, head_names, set_state, set_trainable, unit_map
from f3ocus_core.pretrain import resolve_model_path
from f3ocus_core.selection import ALGORITHMS
from f3ocus_core.training import evaluate, first_batch, make_collate, train

app = ClientApp()


@lru_cache(maxsize=2)
def _base(path: str, peft: PeftSettings) -> tuple[object, object, LayerMap, UnitMap]:
    """The model with units attached (pristine; copied per message), processor, layer and unit maps."""
    model, processor = load_vqa_model(path)
    layer_map = layer_map_for(model)
    model = attach_units(model, layer_map, peft)
    return model, processor, layer_map, unit_map(model, layer_map, peft.method)


@lru_cache(maxsize=16)
def _data(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    return load_client_data(settings, partition_id, num_partitions)


def _setup(context: Context) -> tuple[RunSettings, ClientData, object, object, LayerMap, UnitMap]:
    """Settings, local data and a fresh model (global units not yet loaded) for this node."""
    settings = parse_run_config(context.run_config, SCORERS, ALGORITHMS)
    node = context.node_config
    data_settings = settings.data
    if "data-path" in node:
        data_settings = replace(data_settings, data_path=str(node["data-path"]))
    data = _data(data_settings, int(node["partition-id"]), int(node["num-partitions"]))
    path = resolve_model_path(settings.model.name, settings.model.cache_dir, settings.model.pretrain_steps, settings.seed)
    base, processor, layer_map, units = _base(path, settings.peft)
    model = copy.deepcopy(base)
    set_answer_head(model.get_base_model() if hasattr(model, "get_base_model") else model, data.labels, settings.seed)
    if "head" in context.state.array_records:
        set_state(model, _numpy(context.state.array_records["head"]))
    return settings, data, model, processor, layer_map, units


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def _record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in state.items()})


def _client_record(context: Context, data: ClientData, with_labels: bool) -> ConfigRecord:
    record = {"name": data.name, "partition-id": int(context.node_config["partition-id"]), "kind": data.kind}
    if with_labels:
        record["labels"] = list(data.labels)
    return ConfigRecord(record)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Score every layer of the received global model on a local batch."""
    started = time.perf_counter()
    settings, data, model, processor, layer_map, _ = _setup(context)
    arrays = msg.content.array_records["arrays"]
    set_state(model, _numpy(arrays))
    context.state["global"] = arrays
    server_round = int(msg.content.config_records["config"]["server-round"])
    collate = make_collate(processor, data.labels)
    batch = first_batch(data.train, collate, settings.scoring.batch_size, seed=settings.seed + server_round)
    scores = score_layers(model, batch, layer_map, method=settings.scoring.method,
                          reduction=settings.scoring.reduction, projection_dim=settings.scoring.projection_dim,
                          seed=settings.seed + server_round)
    metrics = MetricRecord({"scores": [float(v) for v in scores.normalized], "raw": [float(v) for v in scores.raw],
                            "num-examples": len(data.train), "seconds": time.perf_counter() - started})
    return Message(RecordDict({"scores": metrics, "client": _client_record(context, data, True)}), reply_to=msg)


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train only the assigned layers' units and the personal head; send back only those units."""
    settings, data, model, processor, _, units = _setup(context)
    if "global" not in context.state.array_records:
        raise RuntimeError("No global units from this round's query; the client restarted mid-round.")
    set_state(model, _numpy(context.state.array_records["global"]))
    set_state(model, _numpy(msg.content.array_records["arrays"]))
    config = msg.content.config_records["config"]
    layers = [int(layer) for layer in config["layers"]]
    set_trainable(model, units, layers, head=True)
    started = time.perf_counter()
    result = train(model, data.train, make_collate(processor, data.labels), settings.train,
                   seed=settings.seed + int(config["server-round"]))
    context.state["head"] = _record(get_state(model, head_names(model)))
    metrics = MetricRecord({"num-examples": len(data.train), "train-loss": result["loss"], "steps": result["steps"],
                            "seconds": time.perf_counter() - started})
    return Message(RecordDict({"arrays": _record(get_state(model, units.keys_of(layers))), "metrics": metrics,
                               "client": _client_record(context, data, False)}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received global units with the personal head on the local test part."""
    settings, data, model, processor, _, _ = _setup(context)
    set_state(model, _numpy(msg.content.array_records["arrays"]))
    metrics = evaluate(model, data.test, make_collate(processor, data.labels), data.kind, settings.eval_batch_size)
    metrics["num-examples"] = len(data.test)
    return Message(RecordDict({"metrics": MetricRecord(metrics), "client": _client_record(context, data, True)}),
                   reply_to=msg)
