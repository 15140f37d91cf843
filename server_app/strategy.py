"""The F3OCUS strategy: score, select, train the assigned layers, aggregate layer-wise, evaluate.

One round (DESIGN.md, "One round, as messages"):

1. ``configure_train`` sends the global units to every client with message type ``query``; each
   replies with its normalised layer scores.
2. It builds the N x L score matrix and per-client budgets and calls
   :func:`f3ocus_core.selection.select`; clients whose scores are invalid are left out of the
   optimisation and get their own top-b of their last valid scores (or a seeded random set).
3. It sends each client its layer ids and those layers' units (``train``).
4. ``aggregate_train`` averages each layer over the clients that trained it, weighted by examples.
5. ``configure_evaluate``/``aggregate_evaluate`` run federated evaluation and write the round's row.

A round-0 federated evaluation of the starting model runs before round 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from f3ocus_core.aggregation import PartialUpdate, aggregate_layers, coverage, validate_update
from f3ocus_core.config import RunSettings
from f3ocus_core.peft_units import UnitMap
from f3ocus_core.recorder import RunRecorder
from f3ocus_core.selection import select, top_b_masks, validate_problem


def to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """A ``{name: array}`` dict as an ``ArrayRecord``."""
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in state.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as a ``{name: array}`` dict."""
    return {key: array.numpy() for key, array in record.items()}


@dataclass
class ClientInfo:
    """What the server knows of a connected client (from its replies)."""

    name: str
    partition_id: int
    kind: str


class F3ocusStrategy(Strategy):
    """Server side of F3OCUS on Flower's Message API.

    Parameters
    ----------
    settings : RunSettings
        The parsed run configuration.
    units : UnitMap
        Per layer, the names of its trainable units (what travels).
    recorder : RunRecorder
        Where the round records and figures go.
    """

    def __init__(self, settings: RunSettings, units: UnitMap, recorder: RunRecorder) -> None:
        self.settings = settings
        self.units = units
        self.recorder = recorder
        self.num_layers = len(units.names)
        self.clients: dict[int, ClientInfo] = {}
        self.last_valid_scores: dict[int, np.ndarray] = {}
        self.assignment: dict[int, list[int]] = {}
        self.global_state: dict[str, np.ndarray] = {}
        self._round: dict = {}
        self._train_sent_at = 0.0
        self._eval_sent_at = 0.0
        self._grid_timeout = settings.round_timeout

    # ------------------------------------------------------------------ helpers

    def summary(self) -> None:
        """Log the strategy's settings."""
        s = self.settings
        log(INFO, "\t├── F3OCUS: scorer=%s, selector=%s (pick=%s), budget=%s", s.scoring.method,
            s.selection.algorithm, s.selection.pick, ",".join(map(str, s.selection.budget)))
        log(INFO, "\t└── %d layers, units=%s, %d tensors", self.num_layers, s.peft.method, len(self.units.all_keys()))

    def _name(self, node_id: int) -> str:
        info = self.clients.get(node_id)
        return info.name if info else f"node-{node_id}"

    def _learn_client(self, msg: Message) -> None:
        """Remember the client's name, partition and kind from the ``client`` ConfigRecord of a reply."""
        if "client" not in msg.content.config_records:
            return
        record = msg.content.config_records["client"]
        info = ClientInfo(str(record["name"]), int(record["partition-id"]), str(record["kind"]))
        self.clients[msg.metadata.src_node_id] = info
        if "labels" in record:
            self.recorder.save_labels(info.name, info.kind, list(record["labels"]))

    def _ok_replies(self, replies: Iterable[Message], phase: str) -> list[Message]:
        """The replies without error; each failure is logged and noted in the round's record."""
        ok = []
        for msg in replies:
            if msg.has_error():
                node = msg.metadata.src_node_id
                log(WARNING, "%s: client %s failed and is left out of this step: %s", phase, self._name(node), msg.error.reason)
                self._round.setdefault("failed", []).append({"phase": phase, "client": self._name(node), "reason": msg.error.reason})
            else:
                ok.append(msg)
        return ok

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        """All connected node ids, after waiting (up to the round timeout) for ``min-clients``."""
        deadline = time.monotonic() + self._grid_timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.settings.min_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"min-clients: only {len(nodes)} of {self.settings.min_clients} clients connected in time.")
            time.sleep(1.0)
        return nodes

    def _messages(self, nodes: list[int], kind: str, make: Callable[[int], RecordDict]) -> list[Message]:
        return [Message(content=make(node), message_type=kind, dst_node_id=node) for node in nodes]

    def _count_down(self, node: int, record: ArrayRecord) -> None:
        self._round.setdefault("bytes_down", {}).setdefault(node, 0)
        self._round["bytes_down"][node] += record.count_bytes()

    # ------------------------------------------------------------------ the run

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Evaluate the starting model on every client (round 0), then run Flower's round loop."""
        self._grid_timeout = timeout
        self.global_state = from_record(initial_arrays)
        nodes = self._wait_for_nodes(grid)
        self.settings.selection.budgets_for(len(nodes))
        log(INFO, "[ROUND 0/%d] evaluating the starting model on %d clients", num_rounds, len(nodes))
        self._round = {"started": time.perf_counter()}
        replies = grid.send_and_receive(self.configure_evaluate(0, initial_arrays, ConfigRecord(), grid), timeout=timeout)
        if self.aggregate_evaluate(0, replies) is None:
            reasons = "; ".join(f"{f['client']}: {f['reason']}" for f in self._round.get("failed", []))
            raise RuntimeError(f"No client could evaluate the starting model, so the run stops before training. {reasons}")
        return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Query scores, solve the assignment, and build one train message per client."""
        self._round = {"started": time.perf_counter()}
        self.global_state = from_record(arrays)
        nodes = self._wait_for_nodes(grid)

        started = time.perf_counter()
        query = self._messages(nodes, MessageType.QUERY, lambda node: RecordDict(
            {"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}))
        for node in nodes:
            self._count_down(node, arrays)
        replies = self._ok_replies(grid.send_and_receive(query, timeout=self._grid_timeout), "score")
        self._round["seconds_score"] = time.perf_counter() - started

        started = time.perf_counter()
        assignment = self._assign(server_round, replies)
        self._round["seconds_select"] = time.perf_counter() - started
        self.assignment = assignment

        messages = []
        for node, layers in assignment.items():
            subset = to_record({key: self.global_state[key] for key in self.units.keys_of(layers)})
            self._count_down(node, subset)
            cfg = ConfigRecord({"server-round": server_round, "layers": [int(l) for l in layers]})
            messages.append(Message(content=RecordDict({"arrays": subset, "config": cfg}),
                                    message_type=MessageType.TRAIN, dst_node_id=node))
        self._train_sent_at = time.perf_counter()
        return messages

    def _assign(self, server_round: int, replies: list[Message]) -> dict[int, list[int]]:
        """Layer ids per node: the selector's answer for valid scores, fall-backs for the rest."""
        for msg in replies:
            self._learn_client(msg)
        order = sorted(replies, key=lambda m: self.clients[m.metadata.src_node_id].partition_id)
        nodes = [m.metadata.src_node_id for m in order]
        if not nodes:
            raise RuntimeError(f"Round {server_round}: no client returned layer scores; see the errors above.")
        all_budgets = self.settings.selection.budgets_for(len(self.clients))
        budget = {node: all_budgets[self.clients[node].partition_id % len(all_budgets)] for node in nodes}

        valid, invalid = [], []
        for msg, node in zip(order, nodes):
            scores = np.asarray(msg.content.metric_records["scores"]["scores"], dtype=float)
            try:
                validate_problem(scores[None, :], [budget[node]])
                if scores.shape != (self.num_layers,):
                    raise ValueError(f"expected {self.num_layers} scores, got {scores.shape[0]}")
            except ValueError as error:
                log(WARNING, "Round %d: client %s sent invalid scores (%s); it gets a fall-back assignment.",
                    server_round, self._name(node), error)
                invalid.append(node)
                continue
            self.last_valid_scores[node] = scores
            valid.append(node)

        assignment: dict[int, list[int]] = {}
        record: dict = {"invalid_clients": [self._name(n) for n in invalid]}
        if valid:
            scores = np.stack([self.last_valid_scores[n] for n in valid])
            budgets = [budget[n] for n in valid]
            sel = self.settings.selection
            result = select(scores, budgets, algorithm=sel.algorithm, seed=self.settings.seed + server_round,
                            pick=sel.pick, exact_budget=sel.exact_budget, **sel.params)
            own = top_b_masks(scores, budgets)
            for node, mask in zip(valid, result.masks):
                assignment[node] = np.flatnonzero(mask).tolist()
            raw = [msg.content.metric_records["scores"]["raw"] for msg in order if msg.metadata.src_node_id in valid]
            record.update({"scored_clients": [self._name(n) for n in valid], "scores": scores, "raw": raw,
                           "budgets": budgets, **result.as_dict()})
            self.recorder.record_selection(server_round, [self._name(n) for n in valid], record, result, own)
        rng = np.random.default_rng(self.settings.seed * 7919 + server_round)
        for node in invalid:
            if node in self.last_valid_scores:
                mask = top_b_masks(self.last_valid_scores[node][None, :], [budget[node]])[0]
                assignment[node] = np.flatnonzero(mask).tolist()
            else:
                assignment[node] = sorted(rng.choice(self.num_layers, size=budget[node], replace=False).tolist())
        names = [self._name(n) for n in nodes]
        masks = np.zeros((len(nodes), self.num_layers), dtype=bool)
        for row, node in enumerate(nodes):
            masks[row, assignment[node]] = True
        self.recorder.record_assignment(server_round, names, masks)
        return {node: assignment[node] for node in nodes}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each partial update against its assignment and average layer-wise."""
        self._round["seconds_train"] = time.perf_counter() - self._train_sent_at
        updates, losses, trained = [], [], []
        for msg in self._ok_replies(replies, "train"):
            node = msg.metadata.src_node_id
            record = msg.content.array_records["arrays"]
            metrics = msg.content.metric_records["metrics"]
            update = PartialUpdate(self._name(node), from_record(record), int(metrics["num-examples"]))
            try:
                validate_update(update, self.units.keys_of(self.assignment.get(node, [])), self.global_state)
            except ValueError as error:
                log(WARNING, "Round %d: update of %s rejected: %s", server_round, update.client, error)
                self._round.setdefault("failed", []).append({"phase": "aggregate", "client": update.client, "reason": str(error)})
                continue
            self._round.setdefault("bytes_up", {})[node] = record.count_bytes()
            updates.append(update)
            losses.append((float(metrics["train-loss"]), update.num_examples))
            trained.append(self.assignment[node])
        self._round["coverage"] = coverage(trained, self.num_layers).tolist()
        if not updates:
            log(WARNING, "Round %d: no valid update; the global model stays as it was.", server_round)
            return None, None
        self.global_state = aggregate_layers(self.global_state, updates)
        weight = sum(n for _, n in losses)
        train_loss = sum(l * n for l, n in losses) / weight
        self._round["train_loss"] = train_loss
        return to_record(self.global_state), MetricRecord({"train-loss": train_loss})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Send the global units to every connected client for evaluation on its test part."""
        nodes = self._wait_for_nodes(grid)
        for node in nodes:
            self._count_down(node, arrays)
        self._eval_sent_at = time.perf_counter()
        return self._messages(nodes, MessageType.EVALUATE, lambda node: RecordDict(
            {"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted metrics over clients; write the round's ``metrics.jsonl`` row and log a line."""
        seconds_eval = time.perf_counter() - self._eval_sent_at
        per_client: dict[str, dict] = {}
        for msg in self._ok_replies(replies, "evaluate"):
            self._learn_client(msg)
            metrics = msg.content.metric_records["metrics"]
            per_client[self._name(msg.metadata.src_node_id)] = {key: float(value) for key, value in metrics.items()}
        if not per_client:
            log(WARNING, "Round %d: no client evaluated.", server_round)
            return None
        row = self._row(server_round, per_client, seconds_eval)
        self.recorder.record_round(row)
        self._log_row(row)
        return MetricRecord({key: row[key] for key in ("score", "loss") if row.get(key) is not None})

    def _row(self, server_round: int, per_client: dict[str, dict], seconds_eval: float) -> dict:
        def weighted(key: str, clients: list[str]) -> float | None:
            total = sum(per_client[c]["num-examples"] for c in clients)
            return sum(per_client[c][key] * per_client[c]["num-examples"] for c in clients) / total if clients else None

        names = sorted(per_client)
        vqa = [c for c in names if "accuracy" in per_client[c]]
        multilabel = [c for c in names if "f1" in per_client[c]]
        row = {
            "round": server_round,
            "accuracy": weighted("accuracy", vqa),
            "accuracy_per_client": {c: per_client[c]["accuracy"] for c in vqa},
            "score": weighted("score", names),
            "score_per_client": {c: per_client[c]["score"] for c in names},
            "loss": weighted("loss", names),
            "train_loss": self._round.get("train_loss"),
            "bytes_up": self._by_name(self._round.get("bytes_up", {})),
            "bytes_down": self._by_name(self._round.get("bytes_down", {})),
            "seconds_score": self._round.get("seconds_score", 0.0),
            "seconds_select": self._round.get("seconds_select", 0.0),
            "seconds_train": self._round.get("seconds_train", 0.0),
            "seconds_eval": seconds_eval,
            "seconds_round": time.perf_counter() - self._round.get("started", time.perf_counter()),
            "clients_evaluated": len(names),
            "failed": self._round.get("failed", []),
        }
        if multilabel:
            row["f1"] = weighted("f1", multilabel)
            row["f1_per_client"] = {c: per_client[c]["f1"] for c in multilabel}
        if server_round > 0:
            row["assignment"] = {self._name(n): layers for n, layers in sorted(self.assignment.items())}
            row["coverage"] = self._round.get("coverage", [])
        return row

    def _by_name(self, per_node: dict[int, int]) -> dict[str, int]:
        """A per-node count keyed by client name."""
        return {self._name(node): int(value) for node, value in sorted(per_node.items())}

    def _log_row(self, row: dict) -> None:
        metric = "accuracy" if row["accuracy"] is not None else "score"
        up = sum(row["bytes_up"].values()) / 1e6
        down = sum(row["bytes_down"].values()) / 1e6
        log(INFO, "Round %d/%d: %s %.4f, loss %.4f | up %.3f MB, down %.3f MB | %.1f s (score %.1f, select %.2f, train %.1f, eval %.1f)",
            row["round"], self.settings.num_rounds, metric, row[metric], row["loss"], up, down, row["seconds_round"],
            row["seconds_score"], row["seconds_select"], row["seconds_train"], row["seconds_eval"])
