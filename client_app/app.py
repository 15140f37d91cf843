"""Flower ClientApp: each message becomes calls of ``f3ocus_core``; nothing else happens here.

- ``train``: train only the assigned layers' units (and the personal head), reply with those units.
- ``evaluate``: load the global units, evaluate on the local test part and, unless it is the last
  round, score every layer on a local batch for the next round's selection; reply with both.
- ``query`` (the first round of a resumed run only): load the global units, score every layer.
- with ``secagg=true``: ``train`` keeps the clipped change and replies with public keys; the
  secure-aggregation stages that follow are ``train`` messages too (:mod:`client_app.secagg`).

The client keeps two things in ``context.state`` between messages: the global units of the next
round (received with ``evaluate``, or ``query``) and its personal answer head. The head is also saved on the node's
disk after each ``train`` (:mod:`f3ocus_core.client_state`, under the run key the server sends), so
a restarted SuperNode or a resumed run starts from the head of the last round before the current
one. The record keys are those of :mod:`f3ocus_flower.protocol`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app import secagg
from client_app.node_config import parse_node_config
from f3ocus_core.accounting import trainable_parameters, training_step_gflop
from f3ocus_core.client_state import ClientStateStore, state_dir
from f3ocus_core.config import RunSettings, parse_run_config
from f3ocus_core.data import ClientData
from f3ocus_core.data.cache import cached_client_data
from f3ocus_core.data.tasks import DataSettings
from f3ocus_core.devices import resolve_device, to_device
from f3ocus_core.families import family_of
from f3ocus_core.importance import score_layers
from f3ocus_core.models import set_answer_head
from f3ocus_core.peft_units import PeftSettings, get_state, head_names, set_state, set_trainable
from f3ocus_core.pretrain import default_cache_dir
from f3ocus_core.privacy import clip_update, privatize_scores
from f3ocus_core.training import Collate, evaluate, first_batch, make_collate, train
from f3ocus_flower.model_setup import ModelSetup, model_path, set_up_model
from f3ocus_flower.protocol import (
    ARRAYS,
    CLIENT,
    CONFIG,
    LAYERS,
    METRICS,
    NUM_EXAMPLES,
    RUN_KEY,
    SCORE_ROUND,
    SCORES,
    SECAGG,
    SECONDS,
    SERVER_ROUND,
    STEPS,
    TRAIN_GFLOP,
    TRAIN_LOSS,
    TRAINABLE_PARAMS,
    ClientInfo,
    ScoresReply,
    record_to_state,
    scalar,
    scalar_list,
    state_to_record,
)

app = ClientApp()

# Keys of context.state.
GLOBAL_UNITS = "global"
HEAD = "head"


@lru_cache(maxsize=2)
def _pristine(path: str, peft: PeftSettings) -> ModelSetup:
    """The set-up model, loaded once per process; each message works on a deep copy of it."""
    return set_up_model(path, peft)


@lru_cache(maxsize=16)
def _data(settings: DataSettings, partition_id: int, num_partitions: int) -> ClientData:
    """The client's data, once per process; prepared once per node (cached under ``$F3OCUS_CACHE/data``)."""
    return cached_client_data(settings, partition_id, num_partitions, default_cache_dir() / "data")


def _store(msg: Message, context: Context) -> ClientStateStore | None:
    """This client's state on disk, for the run the message belongs to (None if it names no run)."""
    key = msg.content.config_records[CONFIG].get(RUN_KEY)
    if not key:
        return None
    node = parse_node_config(context.node_config)
    return ClientStateStore(state_dir(node.state_dir), str(key), node.partition_id)


def _restore_head(context: Context, store: ClientStateStore | None, max_round: int) -> None:
    """Put the newest head saved on disk up to ``max_round`` into ``context.state`` if it has none
    (a fresh context: the SuperNode restarted, or the run was resumed)."""
    if HEAD in context.state.array_records or store is None:
        return
    saved = store.load(HEAD, max_round)
    if saved is not None:
        context.state[HEAD] = state_to_record(saved[1])


def _setup(context: Context) -> tuple[RunSettings, ClientData, ModelSetup, torch.device]:
    """Settings, local data, a fresh model with this node's head (global units not yet loaded) and
    the device this node computes on (its ``device`` node config, else the run's ``device``)."""
    settings = parse_run_config(context.run_config)
    node = parse_node_config(context.node_config)
    device = resolve_device(node.device, settings.device)
    data_settings = settings.data
    if node.data_path is not None:
        data_settings = replace(data_settings, data_path=node.data_path)
    data = _data(data_settings, node.partition_id, node.num_partitions)
    pristine = _pristine(model_path(settings), settings.peft)
    model = copy.deepcopy(pristine.model)
    set_answer_head(model, data.labels, settings.seed)
    if HEAD in context.state.array_records:
        set_state(model, record_to_state(context.state.array_records[HEAD]))
    return settings, data, replace(pristine, model=model.to(device)), device


def _collate(setup: ModelSetup, data: ClientData) -> Collate:
    """The client's rows-to-batch function; a multi-label task asks generative models yes/no per label."""
    return make_collate(setup.processor, data.labels, multi_label=data.kind == "multilabel")


def _client_info(context: Context, data: ClientData, with_labels: bool) -> ClientInfo:
    labels = tuple(data.labels) if with_labels else None
    return ClientInfo(data.name, parse_node_config(context.node_config).partition_id, data.kind, labels)


def _score(
    setup: ModelSetup, data: ClientData, settings: RunSettings, device: torch.device, context: Context, score_round: int
) -> ScoresReply:
    """Score every layer of ``setup.model`` (the received units loaded) on a local batch, seeded by
    ``score_round``, the round whose selection the scores are for."""
    started = time.perf_counter()
    collate = _collate(setup, data)
    batch = first_batch(data.train, collate, settings.scoring.batch_size, seed=settings.seed + score_round)
    reduction = settings.scoring.reduction
    if reduction == "head" and family_of(setup.model).generative:
        reduction = "projection"  # a generative model has no answer head to project on
    scores = score_layers(
        setup.model,
        to_device(batch, device),
        setup.layer_map,
        method=settings.scoring.method,
        reduction=reduction,
        projection_dim=settings.scoring.projection_dim,
        seed=settings.seed + score_round,
        client_seed=parse_node_config(context.node_config).partition_id,
    )
    normalized, raw = scores.normalized, scores.raw
    if settings.dp.scores:  # noised before they leave; the raw scores stay here (f3ocus_core.privacy)
        normalized = raw = privatize_scores(normalized, settings.dp.score_noise_multiplier, np.random.default_rng())
    return ScoresReply(tuple(normalized), tuple(raw), len(data.train), time.perf_counter() - started)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Score every layer of the received global model on a local batch (the first round of a resumed
    run only: the clients of a new Flower run hold no global units, the server no scores)."""
    server_round = int(scalar(msg.content.config_records[CONFIG][SERVER_ROUND]))
    store = _store(msg, context)
    if store is not None:
        store.discard(HEAD, from_round=server_round)  # left by an attempt at this round before a server crash
    _restore_head(context, store, server_round - 1)
    settings, data, setup, device = _setup(context)
    arrays = msg.content.array_records[ARRAYS]
    set_state(setup.model, record_to_state(arrays))
    context.state[GLOBAL_UNITS] = arrays
    reply = _score(setup, data, settings, device, context, server_round)
    return Message(
        RecordDict({SCORES: reply.to_record(), CLIENT: _client_info(context, data, True).to_record()}), reply_to=msg
    )


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train only the assigned layers' units and the personal head; send back only those units (with
    ``secagg=true``: keep them and send public keys; a secure-aggregation stage goes to
    :func:`secure_stage`)."""
    if secagg.uses_secagg(msg.content):
        return secure_stage(msg, context)
    config = msg.content.config_records[CONFIG]
    server_round = int(scalar(config[SERVER_ROUND]))
    store = _store(msg, context)
    if store is not None:
        store.discard(HEAD, from_round=server_round)  # left by an attempt at this round before a server crash
    _restore_head(context, store, server_round - 1)
    settings, data, setup, device = _setup(context)
    if GLOBAL_UNITS not in context.state.array_records:
        raise RuntimeError(
            "No global units from the previous round's evaluate message: the client restarted "
            "since; it takes part again from the next round."
        )
    set_state(setup.model, record_to_state(context.state.array_records[GLOBAL_UNITS]))
    set_state(setup.model, record_to_state(msg.content.array_records[ARRAYS]))
    layers = [int(layer) for layer in scalar_list(config[LAYERS])]
    set_trainable(setup.model, setup.units, layers, head=True)
    collate, seed = _collate(setup, data), settings.seed + server_round
    started = time.perf_counter()
    result = train(setup.model, data.train, collate, settings.train, seed=seed, device=device)
    seconds = time.perf_counter() - started
    step = to_device(first_batch(data.train, collate, settings.train.batch_size, seed=seed), device)
    gflop = training_step_gflop(setup.model, step) * result["steps"]
    head = get_state(setup.model, head_names(setup.model))
    context.state[HEAD] = state_to_record(head)
    if store is not None:
        store.save(HEAD, server_round, head)
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: len(data.train),
            TRAIN_LOSS: result["loss"],
            STEPS: result["steps"],
            SECONDS: seconds,
            TRAINABLE_PARAMS: trainable_parameters(setup.model),
            TRAIN_GFLOP: gflop,
        }
    )
    trained = get_state(setup.model, setup.units.keys_of(layers))
    sent = record_to_state(msg.content.array_records[ARRAYS])
    if settings.dp.updates:  # the whole update's change clipped to dp.clip-norm (f3ocus_core.privacy)
        trained = clip_update(trained, sent, settings.dp.clip_norm)[0]
    if settings.secagg:  # the change stays here; only its masked sum with the others' leaves
        payload = {SECAGG: secagg.keep_change(context.state, msg.metadata.dst_node_id, server_round, trained, sent)}
    else:
        payload = {ARRAYS: state_to_record(trained)}
    return Message(
        RecordDict({**payload, METRICS: metrics, CLIENT: _client_info(context, data, False).to_record()}), reply_to=msg
    )


def secure_stage(msg: Message, context: Context) -> Message:
    """One secure-aggregation stage after ``train`` (:func:`client_app.secagg.answer_stage`); the
    shapes of the units come from the global units the client holds."""
    settings = parse_run_config(context.run_config)
    if not settings.secagg:
        raise RuntimeError("A secure-aggregation stage, but this client's run config has secagg=false.")
    if GLOBAL_UNITS not in context.state.array_records:
        raise RuntimeError("secagg: no global units (the client restarted); it takes part again from the next round.")
    shapes = {key: tuple(array.shape) for key, array in context.state.array_records[GLOBAL_UNITS].items()}
    return Message(secagg.answer_stage(msg.content, context.state, settings.dp.clip_norm, shapes), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received global units with the personal head on the local test part and keep them
    for the next ``train`` message (which sends only the assigned layers' units); if the config names a
    ``score-round``, also score every layer on the same units for that round."""
    config = msg.content.config_records[CONFIG]
    _restore_head(context, _store(msg, context), int(scalar(config[SERVER_ROUND])))
    settings, data, setup, device = _setup(context)
    arrays = msg.content.array_records[ARRAYS]
    set_state(setup.model, record_to_state(arrays))
    metrics = evaluate(
        setup.model,
        data.test,
        _collate(setup, data),
        data.kind,
        settings.eval_batch_size,
        device=device,
        precision=settings.train.precision,
        answer_mode=settings.eval_answer_mode,
    )
    metrics[NUM_EXAMPLES] = len(data.test)
    content = RecordDict({METRICS: MetricRecord({**metrics}), CLIENT: _client_info(context, data, True).to_record()})
    context.state[GLOBAL_UNITS] = arrays
    if SCORE_ROUND in config:
        content[SCORES] = _score(setup, data, settings, device, context, int(scalar(config[SCORE_ROUND]))).to_record()
    return Message(content, reply_to=msg)
