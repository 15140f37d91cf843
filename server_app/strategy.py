"""The F3OCUS strategy: query scores, select layers, train them, aggregate layer-wise, evaluate.

One round, as messages (docs/architecture.md draws it):

1. ``configure_train`` asks every client for its layer scores (:meth:`F3ocusStrategy.query_scores`,
   message type ``query``), chooses each client's layers (:meth:`F3ocusStrategy.assign`) and builds
   one ``train`` message per client with its layer ids and those layers' units.
2. ``aggregate_train`` averages each layer over the clients that trained it, weighted by examples.
3. ``configure_evaluate``/``aggregate_evaluate`` run federated evaluation and write the round's row.

Every reply is checked by :mod:`f3ocus_flower.replies` before it is used; a reply that fails a check,
or that does not come within ``round-timeout``, is logged with its client and the check and left out
of that step, and the run goes on (docs/reliability.md). A round-0 federated evaluation of the
starting model runs before round 1. The run config's ``control`` turns the federated part off, for
comparisons: ``heads-only`` assigns no layer (clients train only their personal heads),
``local-only`` keeps one model per client that only its own updates change (nothing is averaged;
each client is queried, trained and evaluated on its own model). What the round measures
goes into a :class:`~f3ocus_core.recorder.RoundRecord`; the recorder turns it into the metrics row
and the log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from f3ocus_core.aggregation import PartialUpdate, aggregate_layers, bound_update, capped_shares, coverage
from f3ocus_core.checkpoint import Checkpoint, capture_rng, save_checkpoint
from f3ocus_core.client_state import run_key
from f3ocus_core.config import RunSettings
from f3ocus_core.peft_units import UnitMap
from f3ocus_core.privacy import PrivacyLedger, add_layer_noise, equal_weight_clipped, spread_over_sampled
from f3ocus_core.recorder import RoundRecord, RunRecorder, metrics_row, round_log_line
from f3ocus_core.sampling import sample_clients
from f3ocus_core.selection import client_budgets, fallback_assignment, select, top_b_masks
from f3ocus_flower.protocol import (
    ARRAYS,
    CLIENT,
    CONFIG,
    LOSS,
    METRIC,
    METRICS,
    RUN_KEY,
    TRAIN_GFLOP,
    TRAIN_LOSS,
    TRAINABLE_PARAMS,
    ClientInfo,
    ScoresReply,
    record_to_state,
    round_config,
    state_to_record,
)
from f3ocus_flower.replies import (
    Rejected,
    Rejection,
    check_client_info,
    check_evaluate_reply,
    check_records,
    check_score_values,
    check_train_reply,
    parse_scores_reply,
    printable,
    screen,
)
from f3ocus_flower.rounds import run_rounds


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
    fingerprint : dict | None
        The run's configuration fingerprint (:func:`~f3ocus_core.checkpoint.config_fingerprint`):
        given, a checkpoint is written to ``recorder.out_dir/checkpoint/`` after every round.
    """

    def __init__(self, settings: RunSettings, units: UnitMap, recorder: RunRecorder,
                 fingerprint: dict | None = None) -> None:
        self.settings = settings
        self.units = units
        self.recorder = recorder
        self.num_layers = len(units.names)
        self.clients: dict[int, ClientInfo] = {}
        self.last_valid_scores: dict[int, np.ndarray] = {}
        self.global_state: dict[str, np.ndarray] = {}
        self.round = RoundRecord(0)
        self.reported_examples: dict[int, int] = {}
        self.timeout = settings.round_timeout
        self._train_sent_at = 0.0
        self._eval_sent_at = 0.0
        self.fingerprint = fingerprint
        self.run_key = run_key(recorder.out_dir)
        self.resumed_round: int | None = None
        self._restored_scores: dict[int, np.ndarray] = {}
        self.local_states: dict[int, dict[str, np.ndarray]] = {}
        self.ledger: PrivacyLedger | None = None
        self.stopped = ""

    def summary(self) -> None:
        """Log the strategy's settings."""
        s = self.settings
        log(INFO, "\t├── F3OCUS: scorer=%s, selector=%s (pick=%s), budget=%s", s.scoring.method,
            s.selection.algorithm, s.selection.pick, ",".join(map(str, s.selection.budget)))
        log(INFO, "\t└── %d layers, units=%s, %d tensors", self.num_layers, s.peft.method, len(self.units.all_keys()))

    # ------------------------------------------------------------------ the run

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Evaluate the starting model on every client (round 0), then run the rounds; a resumed
        strategy (:meth:`import_state`) starts at the round after its checkpoint's instead."""
        self.timeout = timeout
        self.global_state = record_to_state(initial_arrays)
        nodes = self._wait_for_nodes(grid)
        self.settings.selection.budgets_for(len(nodes))
        if self.ledger is None:  # a resumed run keeps its checkpoint's ledger
            self.ledger = PrivacyLedger(self.settings.dp, len(nodes))
        log(INFO, "Starting %s:", self.__class__.__name__)
        self.summary()
        if self.settings.dp.updates or self.settings.dp.scores:
            rounds = num_rounds - (self.resumed_round or 0)
            log(INFO, "Differential privacy: %s", self.ledger.describe(rounds, self._sample_size()))
        if self.resumed_round is not None:
            log(INFO, "Resuming after round %d of %d", self.resumed_round, num_rounds)
            return run_rounds(self, grid, initial_arrays, self.resumed_round + 1, num_rounds, timeout,
                              after_round=self._round_done)
        log(INFO, "[ROUND 0/%d] evaluating the starting model on %d clients", num_rounds, len(nodes))
        self.round = RoundRecord(0)
        messages = self.configure_evaluate(0, initial_arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        if self.aggregate_evaluate(0, replies) is None:
            reasons = "; ".join(f"{f['client']}: {f['reason']}" for f in self.round.failed[:10])
            raise RuntimeError("No client could evaluate the starting model, so the run stops before training. "
                               + reasons)
        self._round_done(0, initial_arrays)
        return run_rounds(self, grid, initial_arrays, 1, num_rounds, timeout, after_round=self._round_done)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Query the scores, choose each client's layers, and build one train message per client."""
        self.round = RoundRecord(server_round)
        self.reported_examples = {}
        self.global_state = record_to_state(arrays)
        replies = self.query_scores(server_round, arrays, grid)
        started = time.perf_counter()
        self.round.assignment = self.assign(server_round, replies)
        self.round.seconds_select = time.perf_counter() - started
        messages = []
        for node, layers in self.round.assignment.items():
            state = self.local_states.get(node, self.global_state)
            subset = state_to_record({key: state[key] for key in self.units.keys_of(layers)})
            messages.append(self._message(MessageType.TRAIN, node, subset, round_config(server_round, layers)))
        self._train_sent_at = time.perf_counter()
        return messages

    def query_scores(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> list[Message]:
        """Send the global units to this round's clients as ``query`` (all connected clients, or a
        sample of ``clients-per-round`` of them, :func:`~f3ocus_core.sampling.sample_clients`); return
        the replies that passed :func:`~f3ocus_flower.replies.screen` and name their client (the
        others sit this round out)."""
        nodes = sample_clients(sorted(self._wait_for_nodes(grid), key=self._partition_order),
                               self.settings.clients_per_round, self.settings.seed, server_round)
        started = time.perf_counter()
        messages = [self._message(MessageType.QUERY, node, self._model_of(node, arrays), round_config(server_round))
                    for node in nodes]
        replies = self._screened(server_round, MessageType.QUERY, grid.send_and_receive(messages, timeout=self.timeout),
                                 nodes)
        self.round.seconds_query = time.perf_counter() - started
        return replies

    def assign(self, server_round: int, replies: list[Message]) -> dict[int, list[int]]:
        """Layer ids per node, in partition order: the selector's choice for clients with usable
        scores, :func:`~f3ocus_core.selection.fallback_assignment` for the others."""
        if not replies:
            raise RuntimeError(f"Round {server_round}: no client returned layer scores; see the errors above.")
        replies = sorted(replies, key=lambda m: self.clients[m.metadata.src_node_id].partition_id)
        nodes = [msg.metadata.src_node_id for msg in replies]
        budgets = dict(zip(nodes, client_budgets(self.settings.selection.budget,
                                                 [self.clients[node].partition_id for node in nodes])))
        scores = {msg.metadata.src_node_id: self._parsed_scores(server_round, msg) for msg in replies}
        heads_only = self.settings.control == "heads-only"
        usable = [] if heads_only else [node for node in nodes
                                        if self._usable(server_round, node, scores[node], budgets[node])]
        unusable = [n for n in nodes if n not in usable]
        if heads_only:
            assignment = {node: [] for node in nodes}
        else:
            assignment = self._select(server_round, usable, unusable, scores, budgets) if usable else {}
        rng = np.random.default_rng(self.settings.seed * 7919 + server_round)
        for node in nodes:
            if node not in assignment:
                assignment[node] = fallback_assignment(self.last_valid_scores.get(node), budgets[node],
                                                       self.num_layers, rng)
        masks = np.zeros((len(nodes), self.num_layers), dtype=bool)
        for row, node in enumerate(nodes):
            masks[row, assignment[node]] = True
        self.recorder.record_assignment(server_round, [self._name(n) for n in nodes], masks)
        return {node: assignment[node] for node in nodes}

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each partial update against its assignment and average layer-wise (under
        ``control='local-only'``: put it into its client's own model instead)."""
        self.round.seconds_train = time.perf_counter() - self._train_sent_at
        self._account(server_round)
        updates, losses, trained, nodes = [], [], [], []
        # In partition order, not arrival order: the average is then the same bit for bit whichever
        # client answers first (a resumed run repeats the uninterrupted one exactly).
        screened = sorted(self._screened(server_round, MessageType.TRAIN, replies, self.round.assignment),
                          key=lambda m: self._partition_order(m.metadata.src_node_id))
        for msg in screened:
            update = self._accepted_update(server_round, msg)
            if update is not None:
                updates.append(update)
                node = msg.metadata.src_node_id
                nodes.append(node)
                metrics = msg.content.metric_records[METRICS]
                losses.append(float(metrics[TRAIN_LOSS]))
                if TRAINABLE_PARAMS in metrics and TRAIN_GFLOP in metrics:  # absent from older clients
                    self.round.trainable_params[node] = int(metrics[TRAINABLE_PARAMS])
                    self.round.train_gflop[node] = float(metrics[TRAIN_GFLOP])
                trained.append(self.round.assignment[msg.metadata.src_node_id])
        self.round.coverage = coverage(trained, self.num_layers).tolist()
        if not updates:
            log(WARNING, "Round %d: no valid update; the global model stays as it was.", server_round)
            return None, None
        updates = [self._bounded(server_round, node, update) for node, update in zip(nodes, updates)]
        if self.settings.dp.updates:  # clipped again, equal weights (f3ocus_core.privacy)
            updates = equal_weight_clipped(updates, [self.local_states.get(node, self.global_state) for node in nodes],
                                           self.settings.dp.clip_norm)
        before = self.global_state
        if self.settings.control == "local-only":
            for node, update in zip(nodes, updates):
                self.local_states[node] = {**self.local_states.get(node, self.global_state), **update.state}
        else:
            self.global_state = aggregate_layers(self.global_state, updates, lora=self.settings.aggregation_lora,
                                                 max_share=self.settings.aggregation_max_client_share,
                                                 robust=self.settings.aggregation_robust)
            if self.settings.dp.updates:
                self.global_state = self._noised(before)
        shares = capped_shares([update.num_examples for update in updates], self.settings.aggregation_max_client_share)
        self.round.train_loss = float(sum(loss * share for loss, share in zip(losses, shares)))
        return state_to_record(self.global_state), MetricRecord({TRAIN_LOSS: self.round.train_loss})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Send the global units to every connected client for evaluation on its test part."""
        messages = [self._message(MessageType.EVALUATE, node, self._model_of(node, arrays), round_config(server_round))
                    for node in self._wait_for_nodes(grid)]
        self._eval_sent_at = time.perf_counter()
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted metrics over clients; write the round's ``metrics.jsonl`` row and log a line."""
        self.round.seconds_eval = time.perf_counter() - self._eval_sent_at
        evaluations: dict[str, dict[str, float]] = {}
        sent = self.round.bytes_down[MessageType.EVALUATE]
        for msg in self._screened(server_round, MessageType.EVALUATE, replies, sent):
            try:
                evaluations[self._name(msg.metadata.src_node_id)] = check_evaluate_reply(msg.content)
            except Rejected as error:
                self._reject(server_round, MessageType.EVALUATE, Rejection(msg.metadata.src_node_id, error.check,
                                                                           error.detail))
        row = metrics_row(self.round, evaluations, self._name, max_share=self.settings.aggregation_max_client_share)
        self.recorder.record_round(row)
        if not evaluations:
            log(WARNING, "Round %d: no client evaluated; the row keeps its assignment and failures.", server_round)
            return None
        log(INFO, "%s", round_log_line(row, self.settings.num_rounds))
        return MetricRecord({key: row[key] for key in (METRIC, LOSS) if row.get(key) is not None})

    # ------------------------------------------------------------------ checkpoint state

    def export_state(self) -> dict:
        """The strategy's state as JSON: each client seen (name, partition id, kind, last valid
        scores) and the recorder's rows and assignments."""
        clients = []
        for node, info in sorted(self.clients.items(), key=lambda item: item[1].partition_id):
            scores = self.last_valid_scores.get(node)
            clients.append({"name": info.name, "partition_id": info.partition_id, "kind": info.kind,
                            "last_valid_scores": None if scores is None else [float(v) for v in scores]})
        privacy = None if self.ledger is None else {"population": self.ledger.population, "rounds": self.ledger.rounds,
                                                    "score_releases": self.ledger.score_releases}
        return {"clients": clients, "privacy": privacy, **self.recorder.export_state()}

    def import_state(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: :meth:`start` then runs the rounds after its round. Node ids
        change across restarts, so last valid scores are matched to clients by partition id."""
        self.resumed_round = checkpoint.server_round
        self.global_state = dict(checkpoint.units)
        self._restored_scores = {int(client["partition_id"]): np.asarray(client["last_valid_scores"], dtype=float)
                                 for client in checkpoint.strategy["clients"]
                                 if client["last_valid_scores"] is not None}
        self.recorder.import_state(checkpoint.strategy, checkpoint.server_round)
        privacy = checkpoint.strategy.get("privacy")
        if privacy:
            self.ledger = PrivacyLedger(self.settings.dp, int(privacy["population"]), list(privacy["rounds"]),
                                        int(privacy["score_releases"]))

    def _round_done(self, server_round: int, arrays: ArrayRecord) -> None:
        """After a complete round: write the checkpoint (if this strategy has a fingerprint)."""
        if self.fingerprint is None:
            return
        rng, torch_rng = capture_rng()
        save_checkpoint(self.recorder.out_dir, Checkpoint(server_round, record_to_state(arrays), self.export_state(),
                                                          self.fingerprint, rng, torch_rng))

    # ------------------------------------------------------------------ privacy

    def stop_before(self, server_round: int) -> str | None:
        """Why round ``server_round`` must not run (it would take an epsilon above
        ``dp.target-epsilon``), or None; the reason is kept in :attr:`stopped`."""
        reason = self.ledger.would_exceed(self._sample_size()) if self.ledger else None
        if reason:
            self.stopped = f"stopped before round {server_round}: {reason}"
        return self.stopped or None

    def _account(self, server_round: int) -> None:
        """Account this round's releases in the ledger; the epsilons go into the round's record."""
        if self.ledger is None or not (self.settings.dp.updates or self.settings.dp.scores):
            return
        self.round.privacy = {**self.ledger.record(self._sample_size()), "dp_delta": self.settings.dp.delta}

    def _noised(self, before: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The averaged global state with each trained layer's Gaussian noise (f3ocus_core.privacy);
        with ``dp.hide-participation``, every layer spread over the round's sampled clients and noised."""
        dp, counts = self.settings.dp, self.round.coverage
        state = self.global_state
        if dp.hide_participation:
            sampled = self._sample_size()  # fixed before any reply: not who answered or trained
            state = spread_over_sampled(state, before, self.units.names, counts, sampled)
            counts = [sampled] * self.num_layers
        return add_layer_noise(state, self.units.names, counts, dp.noise_multiplier, dp.clip_norm,
                               np.random.default_rng())

    def _sample_size(self) -> int:
        """Clients sampled per round: ``clients-per-round`` of the population (all if 0)."""
        wanted = self.settings.clients_per_round
        return min(wanted, self.ledger.population) if wanted else self.ledger.population

    # ------------------------------------------------------------------ helpers

    def _select(self, server_round: int, nodes: list[int], unusable: list[int], scores: dict[int, ScoresReply],
                budgets: dict[int, int]) -> dict[int, list[int]]:
        """Run the selector over the clients with usable scores and record its front."""
        matrix = np.stack([self.last_valid_scores[node] for node in nodes])
        node_budgets = [budgets[node] for node in nodes]
        sel = self.settings.selection
        result = select(matrix, node_budgets, algorithm=sel.algorithm, seed=self.settings.seed + server_round,
                        pick=sel.pick, exact_budget=sel.exact_budget, **sel.params)
        names = [self._name(node) for node in nodes]
        record = {"invalid_clients": [self._name(node) for node in unusable], "scored_clients": names,
                  "scores": matrix, "raw": [list(scores[node].raw) for node in nodes], "budgets": node_budgets,
                  **result.as_dict()}
        self.recorder.record_selection(server_round, names, record, result, top_b_masks(matrix, node_budgets))
        return {node: np.flatnonzero(mask).tolist() for node, mask in zip(nodes, result.masks)}

    def _parsed_scores(self, server_round: int, msg: Message) -> ScoresReply | None:
        """The ``query`` reply's scores if their record is well formed (its ``num-examples`` is then
        what the client's train reply must report); else None, noted as rejected."""
        node = msg.metadata.src_node_id
        try:
            reply = parse_scores_reply(msg.content)
        except Rejected as error:
            self._reject(server_round, MessageType.QUERY, Rejection(node, error.check, error.detail),
                         "it trains its fall-back layers")
            return None
        self.reported_examples[node] = reply.num_examples
        return reply

    def _usable(self, server_round: int, node: int, scores: ScoresReply | None, budget: int) -> bool:
        """Whether the client's scores can enter the selection; if so they become its last valid ones."""
        if scores is None:
            return False
        try:
            values = check_score_values(scores, self.num_layers, budget)
        except Rejected as error:
            self._reject(server_round, MessageType.QUERY, Rejection(node, error.check, error.detail),
                         "it trains its fall-back layers")
            return False
        self.last_valid_scores[node] = values
        return True

    def _accepted_update(self, server_round: int, msg: Message) -> PartialUpdate | None:
        """The reply's update if it passes :func:`~f3ocus_flower.replies.check_train_reply`; else None,
        noted as rejected."""
        node = msg.metadata.src_node_id
        try:
            update = check_train_reply(msg.content, self._name(node),
                                       self.units.keys_of(self.round.assignment.get(node, [])),
                                       self.units.all_keys(), self.global_state, self.reported_examples.get(node))
        except Rejected as error:
            self._reject(server_round, MessageType.TRAIN, Rejection(node, error.check, error.detail))
            return None
        self.round.bytes_up[node] = msg.content.array_records[ARRAYS].count_bytes()
        return update

    def _bounded(self, server_round: int, node: int, update: PartialUpdate) -> PartialUpdate:
        """``update`` with each layer's change clipped to ``aggregation.max-update-norm`` times the
        norm of the units the client was sent (:func:`~f3ocus_core.aggregation.bound_update`); each
        clipped layer is logged."""
        bound = self.settings.aggregation_max_update_norm
        if bound <= 0:
            return update
        sent = self.local_states.get(node, self.global_state)
        update, clipped = bound_update(update, sent, self.units.names, bound)
        for layer, ratio in clipped.items():
            log(WARNING, "Round %d, train: update of client %s on layer %d clipped: its change was %.3g times the "
                "layer's norm, above aggregation.max-update-norm=%g.", server_round, self._name(node), layer, ratio,
                bound)
        return update

    def _model_of(self, node: int, arrays: ArrayRecord) -> ArrayRecord:
        """The units ``node`` works on: its own model under ``control='local-only'`` (once it has
        trained), else the global ``arrays``."""
        if node in self.local_states:
            return state_to_record(self.local_states[node])
        return arrays

    def _message(self, kind: str, node: int, arrays: ArrayRecord, config: ConfigRecord) -> Message:
        """One message to ``node``; its arrays count as bytes down in the phase named by ``kind``
        (``MessageType.QUERY``, ``TRAIN`` and ``EVALUATE`` are the strings "query", "train", "evaluate")."""
        self.round.count_down(kind, node, arrays.count_bytes())
        config[RUN_KEY] = self.run_key
        return Message(content=RecordDict({ARRAYS: arrays, CONFIG: config}), message_type=kind, dst_node_id=node)

    def _partition_order(self, node_id: int) -> tuple[int, int]:
        """A sort key that puts known clients in partition order (node id for any unknown one)."""
        info = self.clients.get(node_id)
        return (info.partition_id, node_id) if info else (1 << 62, node_id)

    def _name(self, node_id: int) -> str:
        info = self.clients.get(node_id)
        return info.name if info else f"node-{node_id}"

    def _learn_client(self, msg: Message) -> None:
        """Remember who sent ``msg`` (its CLIENT record) and save its label set."""
        if CLIENT not in msg.content.config_records:
            return
        info = ClientInfo.from_record(msg.content.config_records[CLIENT])
        self.clients[msg.metadata.src_node_id] = info
        if info.partition_id in self._restored_scores:
            self.last_valid_scores.setdefault(msg.metadata.src_node_id, self._restored_scores.pop(info.partition_id))
        if info.labels is not None:
            self.recorder.save_labels(info.name, info.kind, list(info.labels))

    def _screened(self, server_round: int, phase: str, replies: Iterable[Message],
                  sent: Iterable[int]) -> list[Message]:
        """The replies to ``phase``'s messages (sent to the nodes ``sent``) whose envelope and client
        record pass :mod:`f3ocus_flower.replies`; every other reply, and every node that sent none
        within the round timeout, is logged and noted in the round's record and left out of the step.
        A ``train`` reply may leave out its client record; the others must carry it."""
        accepted, rejected = screen(replies, phase, sent)
        for rejection in rejected:
            self._reject(server_round, phase, rejection)
        named: dict[str, int] = {}
        partitions: dict[int, int] = {}
        budgets = len(self.settings.selection.budget)
        ok = []
        for msg in accepted:
            node = msg.metadata.src_node_id
            try:
                check_records(msg.content, phase)
                info = check_client_info(msg.content, node, self.clients, named, required=phase != MessageType.TRAIN,
                                         partitions_this_phase=partitions,
                                         num_partitions=budgets if budgets > 1 else None)
            except Rejected as error:
                self._reject(server_round, phase, Rejection(node, error.check, error.detail))
                continue
            if info is not None:
                named[info.name] = node
                partitions[info.partition_id] = node
                self._learn_client(msg)
            ok.append(msg)
        return ok

    def _reject(self, server_round: int, phase: str, rejection: Rejection, outcome: str = "") -> None:
        """Log a rejected (or missing) reply with its client and check, and note it in the round's record."""
        name = self._name(rejection.node)
        outcome = outcome or "left out of this step"
        detail = printable(rejection.detail)
        log(WARNING, "Round %d, %s: reply of client %s rejected [%s]: %s; %s.", server_round, phase, name,
            rejection.check, detail, outcome)
        self.round.fail(phase, name, f"{rejection.check}: {detail}")

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        """All connected node ids, after waiting (up to the round timeout) for ``min-clients``."""
        deadline = time.monotonic() + self.timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.settings.min_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"min-clients: only {len(nodes)} of {self.settings.min_clients} clients "
                                   "connected in time.")
            time.sleep(1.0)
        return nodes
