"""Flower's round loop, from any round on: what lets a resumed run continue at round k+1.

:meth:`flwr.serverapp.strategy.Strategy.start` always runs rounds ``1..num_rounds``. This is the
same loop body (configure_train, send, aggregate_train, configure_evaluate, send,
aggregate_evaluate, evaluate_fn) over ``first_round..num_rounds``, with a call after each complete round
(where the server writes its checkpoint). A strategy with a ``stop_before(round)`` method that returns a
reason ends the loop before that round (the privacy budget, :mod:`f3ocus_core.privacy`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    first_round: int,
    num_rounds: int,
    timeout: float,
    after_round: Callable[[int, ArrayRecord], None] | None = None,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    result: Result | None = None,
) -> Result:
    """Run rounds ``first_round..num_rounds`` of ``strategy`` starting from the global ``arrays``.

    Parameters
    ----------
    strategy : Strategy
        Its configure/aggregate methods make the round.
    grid : Grid
        Where messages go.
    arrays : ArrayRecord
        The global arrays before ``first_round``.
    first_round, num_rounds : int
        The rounds to run (none if ``first_round > num_rounds``).
    timeout : float
        Seconds to wait for the replies of each exchange.
    after_round : Callable[[int, ArrayRecord], None] | None
        Called with the round and the global arrays after each round's evaluation.
    train_config, evaluate_config : ConfigRecord | None
        Passed (a copy each round) to ``configure_train``/``configure_evaluate``, as Flower's loop does.
    evaluate_fn : Callable[[int, ArrayRecord], MetricRecord | None] | None
        Server-side evaluation after each round; what it returns goes into
        ``Result.evaluate_metrics_serverapp``.
    result : Result | None
        The result to add to (one with round 0's figures); a new one if None.

    Returns
    -------
    Result
        As Flower's ``Strategy.start`` returns it; ``arrays`` stays empty if no round aggregated.
    """
    result = Result() if result is None else result
    started = time.time()
    for server_round in range(first_round, num_rounds + 1):
        stop_before = getattr(strategy, "stop_before", None)
        if stop_before is not None and (reason := stop_before(server_round)):
            log(INFO, "%s", reason)
            break
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config or {})), grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            result.arrays = arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(evaluate_config or {})), grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = evaluate_metrics
        if evaluate_fn is not None and (server_metrics := evaluate_fn(server_round, arrays)) is not None:
            result.evaluate_metrics_serverapp[server_round] = server_metrics
        if after_round is not None:
            after_round(server_round, arrays)
    log(INFO, "Rounds %d..%d finished in %.2fs", first_round, num_rounds, time.time() - started)
    return result
