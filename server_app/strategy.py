"""The F3OCUS strategy, shaped like Flower's FedAvg: two exchanges per round, train then evaluate.

One round r, as messages (docs/architecture.md draws it):

1. ``configure_train`` samples the round's clients (``clients-per-round``), chooses each one's
   layers from the scores their last evaluation returned (:meth:`F3ocusStrategy.assign`: the
   selector, or the fall-back for a client without usable scores) and builds one ``train`` message
   per client with its layer ids and those layers' units. It sends nothing.
2. ``aggregate_train`` averages each layer over the clients that trained it, weighted by examples.
3. ``configure_evaluate`` sends the new global units to every client; unless r is the last round,
   the message also asks the client to score its layers on them for round r+1.
4. ``aggregate_evaluate`` writes the round's row, and keeps each client's checked scores for r+1.

A round-0 evaluation of the starting model (scoring for round 1) runs before round 1. A resumed run
(:meth:`F3ocusStrategy.import_state`) has neither scores nor clients holding the global units, so its
first round begins with one ``query`` exchange that gets both (:meth:`F3ocusStrategy.query_scores`).
Every reply is checked by :mod:`server_app.replies` before it is used; a reply that fails a
check, or that does not come within ``round-timeout``, is logged with its client and the check and
left out of that step, and the run goes on (docs/reliability.md). What passes between rounds is one
:class:`~server_app.round_state.StrategyState`; the run config's ``control`` is one
:class:`~server_app.control.Control` policy. What the round measures goes into a
:class:`~f3ocus_core.recorder.RoundRecord`; the recorder turns it into the metrics row and the log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

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
    LAYERS,
    LOSS,
    METRIC,
    METRICS,
    RUN_KEY,
    SCORE_ROUND,
    SERVER_ROUND,
    TRAIN_GFLOP,
    TRAIN_LOSS,
    TRAINABLE_PARAMS,
    ClientInfo,
    record_to_state,
    round_config,
    scalar,
    state_to_record,
)
from server_app.control import control_of
from server_app.replies import (
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
from server_app.round_state import ClientScores, StrategyState
from server_app.rounds import run_rounds
from server_app.secagg import STAGES, SecureAggregation

#: CONFIG keys the strategy sets itself; a ``train_config``/``evaluate_config`` may not hold them.
RESERVED_CONFIG_KEYS = (SERVER_ROUND, LAYERS, SCORE_ROUND, RUN_KEY)


class F3ocusStrategy(SecureAggregation, Strategy):
    """Server side of F3OCUS on Flower's Message API (with ``secagg=true``, the train phase of
    :class:`~server_app.secagg.SecureAggregation`).

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

    def __init__(
        self, settings: RunSettings, units: UnitMap, recorder: RunRecorder, fingerprint: dict | None = None
    ) -> None:
        self.settings = settings
        self.units = units
        self.recorder = recorder
        self.num_layers = len(units.names)
        self.control = control_of(settings.control)
        self.state = StrategyState()
        self.num_rounds = settings.num_rounds
        self.timeout = settings.round_timeout
        self._train_sent_at = 0.0
        self._eval_sent_at = 0.0
        self._grid: Grid | None = None  # the round's grid, for the secure-aggregation stages
        self.fingerprint = fingerprint
        self.run_key = run_key(recorder.out_dir)
        self.resumed_round: int | None = None
        self._restored_scores: dict[int, np.ndarray] = {}
        self.ledger: PrivacyLedger | None = None
        self.stopped = ""

    def summary(self) -> None:
        """Log the strategy's settings."""
        s = self.settings
        log(
            INFO,
            "\t├── F3OCUS: scorer=%s, selector=%s (pick=%s), budget=%s, control=%s",
            s.scoring.method,
            s.selection.algorithm,
            s.selection.pick,
            ",".join(map(str, s.selection.budget)),
            self.control.name or "-",
        )
        log(INFO, "\t└── %d layers, units=%s, %d tensors", self.num_layers, s.peft.method, len(self.units.all_keys()))

    # ------------------------------------------------------------------ the run

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Evaluate (and score) the starting model on every client (round 0), then run the rounds; a
        resumed strategy (:meth:`import_state`) queries the scores and starts at the round after its
        checkpoint's instead.

        As Flower's ``Strategy.start``: ``train_config``/``evaluate_config`` go into every ``train``/
        ``evaluate`` message's CONFIG (next to the strategy's own keys, :data:`RESERVED_CONFIG_KEYS`,
        which they may not hold); ``evaluate_fn(server_round, arrays)`` is the server-side evaluation
        after round 0 and every round, its metrics in ``Result.evaluate_metrics_serverapp``.
        """
        for config in (train_config, evaluate_config):
            clash = sorted(set(config or {}) & set(RESERVED_CONFIG_KEYS))
            if clash:
                raise ValueError(f"train_config/evaluate_config may not set {clash}: the strategy sets them.")
        self.timeout = timeout
        self.num_rounds = num_rounds
        self.state.global_units = record_to_state(initial_arrays)
        nodes = self._wait_for_nodes(grid)
        self.settings.selection.budgets_for(len(nodes))
        if self.ledger is None:  # a resumed run keeps its checkpoint's ledger
            self.ledger = PrivacyLedger(self.settings.dp, len(nodes))
        log(INFO, "Starting %s:", self.__class__.__name__)
        self.summary()
        if self.settings.dp.updates or self.settings.dp.scores:
            rounds = num_rounds - (self.resumed_round or 0)
            log(INFO, "Differential privacy: %s", self.ledger.describe(rounds, self._sample_size()))
        if self.settings.secagg:
            log(
                INFO,
                "Secure aggregation: the server learns each layer's sum only (%d more exchanges per round: %s); "
                "equal weights, no aggregation.max-update-norm or max-client-share.",
                len(STAGES),
                ", ".join(STAGES),
            )
        loop: dict[str, Any] = dict(
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
            after_round=self._round_done,
        )
        if self.resumed_round is not None:
            log(INFO, "Resuming after round %d of %d", self.resumed_round, num_rounds)
            if self.resumed_round < num_rounds:
                self.query_scores(self.resumed_round + 1, initial_arrays, grid)
                if self.ledger is not None and self.settings.dp.scores:
                    # The scores of the checkpointed round's evaluate were released and are lost with
                    # the crash: this query is a release of its own.
                    self.ledger.record_scores()
            return run_rounds(self, grid, initial_arrays, self.resumed_round + 1, num_rounds, timeout, **loop)
        log(INFO, "[ROUND 0/%d] evaluating the starting model on %d clients", num_rounds, len(nodes))
        self.state.record = RoundRecord(0)
        messages = self.configure_evaluate(0, initial_arrays, ConfigRecord(dict(evaluate_config or {})), grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        if self.aggregate_evaluate(0, replies) is None:
            reasons = "; ".join(f"{f['client']}: {f['reason']}" for f in self.state.record.failed[:10])
            raise RuntimeError(
                "No client could evaluate the starting model, so the run stops before training. " + reasons
            )
        result = Result()
        if evaluate_fn is not None and (metrics := evaluate_fn(0, initial_arrays)) is not None:
            result.evaluate_metrics_serverapp[0] = metrics
        self._round_done(0, initial_arrays)
        return run_rounds(self, grid, initial_arrays, 1, num_rounds, timeout, result=result, **loop)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One ``train`` message per client of this round: its layer ids (:meth:`assign`, from the
        scores of the last evaluation) and those layers' units, and ``config``'s keys."""
        if self.state.record.server_round != server_round:  # a resumed run's query already opened it
            self.state.record = RoundRecord(server_round)
        self.state.global_units = record_to_state(arrays)
        self._grid = grid
        started = time.perf_counter()
        self.state.record.assignment = self.assign(server_round, self._clients_of_round(server_round, grid))
        self.state.record.seconds_select = time.perf_counter() - started
        messages = []
        for node, layers in self.state.record.assignment.items():
            units = self.state.units_of(node)
            subset = state_to_record({key: units[key] for key in self.units.keys_of(layers)})
            messages.append(
                self._message(MessageType.TRAIN, node, subset, self._config(config, round_config(server_round, layers)))
            )
        self._train_sent_at = time.perf_counter()
        return messages

    def assign(self, server_round: int, nodes: list[int]) -> dict[int, list[int]]:
        """Layer ids per node of ``nodes`` (this round's clients), in partition order: the selector's
        choice for clients with usable scores, :func:`~f3ocus_core.selection.fallback_assignment`
        for the others (under ``control='heads-only'``: no layer for anyone)."""
        if not nodes:
            raise RuntimeError(
                f"Round {server_round}: no client to train; every client failed its evaluation or "
                "left (see the errors above)."
            )
        nodes = sorted(nodes, key=self._partition_order)
        budgets = dict(
            zip(
                nodes,
                client_budgets(
                    self.settings.selection.budget, [self.state.clients[node].partition_id for node in nodes]
                ),
            )
        )
        if not self.control.scores:
            assignment: dict[int, list[int]] = {node: [] for node in nodes}
        else:
            scores = self.state.scores
            usable = [node for node in nodes if node in scores and scores[node].values is not None]
            unusable = [node for node in nodes if node not in usable]
            assignment = self._select(server_round, usable, unusable, budgets) if usable else {}
            rng = np.random.default_rng(self.settings.seed * 7919 + server_round)
            for node in nodes:
                if node not in assignment:
                    assignment[node] = fallback_assignment(
                        self.state.last_valid_scores.get(node), budgets[node], self.num_layers, rng
                    )
        masks = np.zeros((len(nodes), self.num_layers), dtype=bool)
        for row, node in enumerate(nodes):
            masks[row, assignment[node]] = True
        self.recorder.record_assignment(server_round, [self._name(n) for n in nodes], masks)
        return {node: assignment[node] for node in nodes}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each partial update against its assignment and average layer-wise (under
        ``control='local-only'``: put it into its client's own model instead; under ``secagg=true``:
        run the secure-aggregation stages, :meth:`_aggregate_secure`)."""
        record = self.state.record
        record.seconds_train = time.perf_counter() - self._train_sent_at
        self._account(server_round)
        updates, losses, trained, nodes = [], [], [], []
        # In partition order, not arrival order: the average is then the same bit for bit whichever
        # client answers first (a resumed run repeats the uninterrupted one exactly).
        screened = sorted(
            self._screened(server_round, MessageType.TRAIN, replies, record.assignment),
            key=lambda m: self._partition_order(m.metadata.src_node_id),
        )
        if self.settings.secagg:
            return self._aggregate_secure(server_round, screened)
        for msg in screened:
            update = self._accepted_update(server_round, msg)
            if update is not None:
                updates.append(update)
                node = msg.metadata.src_node_id
                nodes.append(node)
                metrics = msg.content.metric_records[METRICS]
                losses.append(float(scalar(metrics[TRAIN_LOSS])))
                if TRAINABLE_PARAMS in metrics and TRAIN_GFLOP in metrics:  # absent from older clients
                    record.trainable_params[node] = int(scalar(metrics[TRAINABLE_PARAMS]))
                    record.train_gflop[node] = float(scalar(metrics[TRAIN_GFLOP]))
                trained.append(record.assignment[node])
        record.coverage = coverage(trained, self.num_layers).tolist()
        if not updates:
            log(WARNING, "Round %d: no valid update; the global model stays as it was.", server_round)
            return None, None
        updates = [self._bounded(server_round, node, update) for node, update in zip(nodes, updates)]
        if self.settings.dp.updates:  # clipped again, equal weights (f3ocus_core.privacy)
            updates = equal_weight_clipped(
                updates, [self.state.units_of(node) for node in nodes], self.settings.dp.clip_norm
            )
        before = self.state.global_units
        if self.control.shared_model:
            self.state.global_units = aggregate_layers(
                self.state.global_units,
                updates,
                lora=self.settings.aggregation_lora,
                max_share=self.settings.aggregation_max_client_share,
                robust=self.settings.aggregation_robust,
            )
            if self.settings.dp.updates:
                self.state.global_units = self._noised(before)
        else:
            for node, update in zip(nodes, updates):
                self.state.local_units[node] = {**self.state.units_of(node), **update.state}
        shares = capped_shares([update.num_examples for update in updates], self.settings.aggregation_max_client_share)
        record.train_loss = float(sum(loss * share for loss, share in zip(losses, shares)))
        return state_to_record(self.state.global_units), MetricRecord({TRAIN_LOSS: record.train_loss})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One ``evaluate`` message per connected client with the units it works on and ``config``'s
        keys; before every round but the last it also asks for the client's scores for the next round."""
        score_round = server_round + 1 if self.control.scores and server_round < self.num_rounds else None
        messages = [
            self._message(
                MessageType.EVALUATE,
                node,
                self._units_record(node, arrays),
                self._config(config, round_config(server_round, score_round=score_round)),
            )
            for node in self._wait_for_nodes(grid)
        ]
        self._eval_sent_at = time.perf_counter()
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted metrics over clients (the round's ``metrics.jsonl`` row and log line); the scores
        that came with the replies whose evaluation passed, checked, are kept for the next round's
        selection. A client without them (failed evaluation, unusable scores) trains its fall-back."""
        record = self.state.record
        record.seconds_eval = time.perf_counter() - self._eval_sent_at
        scoring = self.control.scores and server_round < self.num_rounds
        self.state.scores = {}
        evaluations: dict[str, dict[str, float]] = {}
        for msg in self._screened(server_round, MessageType.EVALUATE, replies, record.bytes_down[MessageType.EVALUATE]):
            try:
                evaluations[self._name(msg.metadata.src_node_id)] = check_evaluate_reply(msg.content)
            except Rejected as error:  # a failed evaluation: its scores do not count either
                self._reject(
                    server_round, MessageType.EVALUATE, Rejection(msg.metadata.src_node_id, error.check, error.detail)
                )
                continue
            if scoring:
                self._keep_scores(server_round, MessageType.EVALUATE, msg)
        row = metrics_row(record, evaluations, self._name, max_share=self.settings.aggregation_max_client_share)
        self.recorder.record_round(row)
        if not evaluations:
            log(WARNING, "Round %d: no client evaluated; the row keeps its assignment and failures.", server_round)
            return None
        log(INFO, "%s", round_log_line(row, self.num_rounds))
        return MetricRecord({key: row[key] for key in (METRIC, LOSS) if row.get(key) is not None})

    def query_scores(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> None:
        """The first round of a resumed run: send every connected client the units it works on as
        ``query`` and keep the scores of the replies, as :meth:`aggregate_evaluate` keeps an
        evaluation's (the clients also keep the units for the round's ``train``)."""
        self.state.record = RoundRecord(server_round)
        self.state.scores = {}
        nodes = self._wait_for_nodes(grid)
        started = time.perf_counter()
        messages = [
            self._message(MessageType.QUERY, node, self._units_record(node, arrays), round_config(server_round))
            for node in nodes
        ]
        replies = grid.send_and_receive(messages, timeout=self.timeout)
        for msg in self._screened(server_round, MessageType.QUERY, replies, nodes):
            self._keep_scores(server_round, MessageType.QUERY, msg)
        self.state.record.seconds_query = time.perf_counter() - started

    # ------------------------------------------------------------------ checkpoint state

    def export_state(self) -> dict:
        """The strategy's state as JSON: each client seen (name, partition id, kind, last valid
        scores) and the recorder's rows and assignments."""
        clients = []
        for node, info in sorted(self.state.clients.items(), key=lambda item: item[1].partition_id):
            scores = self.state.last_valid_scores.get(node)
            clients.append(
                {
                    "name": info.name,
                    "partition_id": info.partition_id,
                    "kind": info.kind,
                    "last_valid_scores": None if scores is None else [float(v) for v in scores],
                }
            )
        privacy = (
            None
            if self.ledger is None
            else {
                "population": self.ledger.population,
                "rounds": self.ledger.rounds,
                "score_releases": self.ledger.score_releases,
            }
        )
        return {"clients": clients, "privacy": privacy, **self.recorder.export_state()}

    def import_state(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint``: :meth:`start` then runs the rounds after its round. Node ids
        change across restarts, so last valid scores are matched to clients by partition id."""
        self.resumed_round = checkpoint.server_round
        self.state.global_units = dict(checkpoint.units)
        self._restored_scores = {
            int(client["partition_id"]): np.asarray(client["last_valid_scores"], dtype=float)
            for client in checkpoint.strategy["clients"]
            if client["last_valid_scores"] is not None
        }
        self.recorder.import_state(checkpoint.strategy, checkpoint.server_round)
        privacy = checkpoint.strategy.get("privacy")
        if privacy:
            self.ledger = PrivacyLedger(
                self.settings.dp, int(privacy["population"]), list(privacy["rounds"]), int(privacy["score_releases"])
            )

    def _round_done(self, server_round: int, arrays: ArrayRecord) -> None:
        """After a complete round: write the checkpoint (if this strategy has a fingerprint)."""
        if self.fingerprint is None:
            return
        rng, torch_rng = capture_rng()
        save_checkpoint(
            self.recorder.out_dir,
            Checkpoint(server_round, record_to_state(arrays), self.export_state(), self.fingerprint, rng, torch_rng),
        )

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
        self.state.record.privacy = {**self.ledger.record(self._sample_size()), "dp_delta": self.settings.dp.delta}

    def _noised(self, before: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The averaged global state with each trained layer's Gaussian noise (f3ocus_core.privacy);
        with ``dp.hide-participation``, every layer spread over the round's sampled clients and noised."""
        dp, counts = self.settings.dp, self.state.record.coverage
        state = self.state.global_units
        if dp.hide_participation:
            sampled = self._sample_size()  # fixed before any reply: not who answered or trained
            state = spread_over_sampled(state, before, self.units.names, counts, sampled)
            counts = [sampled] * self.num_layers
        return add_layer_noise(
            state, self.units.names, counts, dp.noise_multiplier, dp.clip_norm, np.random.default_rng()
        )

    def _sample_size(self) -> int:
        """Clients sampled per round: ``clients-per-round`` of the population (all if 0)."""
        wanted = self.settings.clients_per_round
        assert self.ledger is not None, "start() makes the ledger, which counts the population"
        return min(wanted, self.ledger.population) if wanted else self.ledger.population

    # ------------------------------------------------------------------ helpers

    def _clients_of_round(self, server_round: int, grid: Grid) -> list[int]:
        """The clients that train in ``server_round``: the connected ones the server knows (each has
        replied before, so its partition and budget are known), or a sample of ``clients-per-round``
        of them (:func:`~f3ocus_core.sampling.sample_clients`), in partition order."""
        known = sorted(
            (node for node in self._wait_for_nodes(grid) if node in self.state.clients), key=self._partition_order
        )
        return sample_clients(known, self.settings.clients_per_round, self.settings.seed, server_round)

    def _select(
        self, server_round: int, nodes: list[int], unusable: list[int], budgets: dict[int, int]
    ) -> dict[int, list[int]]:
        """Run the selector over the clients with usable scores and record its front."""
        matrix = np.stack([self._usable_scores(node) for node in nodes])
        node_budgets = [budgets[node] for node in nodes]
        sel = self.settings.selection
        result = select(
            matrix,
            node_budgets,
            algorithm=sel.algorithm,
            seed=self.settings.seed + server_round,
            pick=sel.pick,
            exact_budget=sel.exact_budget,
            **sel.params,
        )
        names = [self._name(node) for node in nodes]
        record = {
            "invalid_clients": [self._name(node) for node in unusable],
            "scored_clients": names,
            "scores": matrix,
            "raw": [list(self.state.scores[node].reply.raw) for node in nodes],
            "budgets": node_budgets,
            **result.as_dict(),
        }
        self.recorder.record_selection(server_round, names, record, result, top_b_masks(matrix, node_budgets))
        return {node: np.flatnonzero(mask).tolist() for node, mask in zip(nodes, result.masks)}

    def _usable_scores(self, node: int) -> np.ndarray:
        """The node's scores as the selector takes them; only nodes whose scores passed the checks get here."""
        values = self.state.scores[node].values
        if values is None:
            raise RuntimeError(f"node {node} has no usable scores, so it has no place in the selection.")
        return values

    def _keep_scores(self, server_round: int, phase: str, msg: Message) -> None:
        """Keep the scores of a screened ``evaluate`` (or ``query``) reply for the next round if they
        parse (:func:`~server_app.replies.parse_scores_reply`); if they also pass
        :func:`~server_app.replies.check_score_values` they are the client's last valid ones.
        Each failed check is logged with the client: it then trains its fall-back layers."""
        node = msg.metadata.src_node_id
        try:
            reply = parse_scores_reply(msg.content)
        except Rejected as error:
            self._reject(
                server_round,
                phase,
                Rejection(node, error.check, error.detail),
                "it trains its fall-back layers next round",
            )
            return
        budget = client_budgets(self.settings.selection.budget, [self.state.clients[node].partition_id])[0]
        try:
            values = check_score_values(reply, self.num_layers, budget)
        except Rejected as error:
            self._reject(
                server_round,
                phase,
                Rejection(node, error.check, error.detail),
                "it trains its fall-back layers next round",
            )
            values = None
        else:
            self.state.last_valid_scores[node] = values
        self.state.scores[node] = ClientScores(reply, values)

    def _accepted_update(self, server_round: int, msg: Message) -> PartialUpdate | None:
        """The reply's update if it passes :func:`~server_app.replies.check_train_reply`; else None,
        noted as rejected."""
        node = msg.metadata.src_node_id
        try:
            update = check_train_reply(
                msg.content,
                self._name(node),
                self.units.keys_of(self.state.record.assignment.get(node, [])),
                self.units.all_keys(),
                self.state.global_units,
                self.state.reported_examples(node),
            )
        except Rejected as error:
            self._reject(server_round, MessageType.TRAIN, Rejection(node, error.check, error.detail))
            return None
        self.state.record.bytes_up[node] = msg.content.array_records[ARRAYS].count_bytes()
        return update

    def _bounded(self, server_round: int, node: int, update: PartialUpdate) -> PartialUpdate:
        """``update`` with each layer's change clipped to ``aggregation.max-update-norm`` times the
        norm of the units the client was sent (:func:`~f3ocus_core.aggregation.bound_update`); each
        clipped layer is logged."""
        bound = self.settings.aggregation_max_update_norm
        if bound <= 0:
            return update
        sent = self.state.units_of(node)
        update, clipped = bound_update(update, sent, self.units.names, bound)
        for layer, ratio in clipped.items():
            log(
                WARNING,
                "Round %d, train: update of client %s on layer %d clipped: its change was %.3g times the "
                "layer's norm, above aggregation.max-update-norm=%g.",
                server_round,
                self._name(node),
                layer,
                ratio,
                bound,
            )
        return update

    def _units_record(self, node: int, arrays: ArrayRecord) -> ArrayRecord:
        """The units ``node`` is sent to evaluate and score: its own model's under
        ``control='local-only'`` (once it has trained), else the global ``arrays``."""
        if node in self.state.local_units:
            return state_to_record(self.state.local_units[node])
        return arrays

    @staticmethod
    def _config(given: ConfigRecord, own: ConfigRecord) -> ConfigRecord:
        """A message's CONFIG: the keys of ``given`` (``start``'s ``train_config``/``evaluate_config``)
        and the strategy's own."""
        return ConfigRecord({**dict(given), **dict(own)})

    def _message(self, kind: str, node: int, arrays: ArrayRecord, config: ConfigRecord) -> Message:
        """One message to ``node``; its arrays count as bytes down in the phase named by ``kind``
        (``MessageType.QUERY``, ``TRAIN`` and ``EVALUATE`` are the strings "query", "train", "evaluate")."""
        self.state.record.count_down(kind, node, arrays.count_bytes())
        config[RUN_KEY] = self.run_key
        return Message(content=RecordDict({ARRAYS: arrays, CONFIG: config}), message_type=kind, dst_node_id=node)

    def _partition_order(self, node_id: int) -> tuple[int, int]:
        """A sort key that puts known clients in partition order (node id for any unknown one)."""
        info = self.state.clients.get(node_id)
        return (info.partition_id, node_id) if info else (1 << 62, node_id)

    def _name(self, node_id: int) -> str:
        info = self.state.clients.get(node_id)
        return info.name if info else f"node-{node_id}"

    def _learn_client(self, msg: Message) -> None:
        """Remember who sent ``msg`` (its CLIENT record) and save its label set."""
        if CLIENT not in msg.content.config_records:
            return
        info = ClientInfo.from_record(msg.content.config_records[CLIENT])
        self.state.clients[msg.metadata.src_node_id] = info
        if info.partition_id in self._restored_scores:
            self.state.last_valid_scores.setdefault(
                msg.metadata.src_node_id, self._restored_scores.pop(info.partition_id)
            )
        if info.labels is not None:
            self.recorder.save_labels(info.name, info.kind, list(info.labels))

    def _screened(
        self, server_round: int, phase: str, replies: Iterable[Message], sent: Iterable[int]
    ) -> list[Message]:
        """The replies to ``phase``'s messages (sent to the nodes ``sent``) whose envelope and client
        record pass :mod:`server_app.replies`; every other reply, and every node that sent none
        within the round timeout, is logged and noted in the round's record and left out of the step.
        A ``train`` reply may leave out its client record; the others must carry it."""
        accepted, rejected = screen(replies, phase, sent)
        for rejection in rejected:
            self._reject(server_round, phase, rejection)
        named: dict[str, int] = {}
        partitions: dict[int, int] = {}
        ok = []
        for msg in accepted:
            node = msg.metadata.src_node_id
            try:
                check_records(msg.content, "secagg" if self.settings.secagg and phase == MessageType.TRAIN else phase)
                info = check_client_info(
                    msg.content,
                    node,
                    self.state.clients,
                    named,
                    required=phase != MessageType.TRAIN,
                    partitions_this_phase=partitions,
                    num_partitions=self.settings.selection.budget_partitions,
                )
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
        log(
            WARNING,
            "Round %d, %s: reply of client %s rejected [%s]: %s; %s.",
            server_round,
            phase,
            name,
            rejection.check,
            detail,
            outcome,
        )
        self.state.record.fail(phase, name, f"{rejection.check}: {detail}")

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        """All connected node ids, after waiting (up to the round timeout) for ``min-clients``."""
        deadline = time.monotonic() + self.timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.settings.min_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"min-clients: only {len(nodes)} of {self.settings.min_clients} clients connected in time."
                )
            time.sleep(1.0)
        return nodes
