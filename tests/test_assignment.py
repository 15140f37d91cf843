"""The server's assignment as the strategy uses it: budgets kept, more layers covered than the
clients' own picks, and clients with invalid scores handled in a run."""

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MessageType, MetricRecord

from f3ocus_core.selection import ALGORITHMS, select, top_b_masks
from tests.inprocess_grid import run_server_app

METAHEURISTICS = [a for a in ALGORITHMS if a not in ("local", "fixed")]  # the ones that optimise


@pytest.mark.parametrize("algorithm", METAHEURISTICS)
def test_when_all_clients_prefer_the_same_layers_the_server_spreads_them(algorithm):
    rng = np.random.default_rng(0)
    preference = np.array([0.30, 0.25, 0.15, 0.10, 0.06, 0.05, 0.04, 0.03, 0.01, 0.01])
    scores = preference + rng.uniform(0, 0.002, size=(6, 10))
    scores /= scores.sum(axis=1, keepdims=True)
    budgets = [2, 3, 2, 1, 2, 3]
    own = top_b_masks(scores, budgets)
    result = select(scores, budgets, algorithm=algorithm, seed=1)
    assert result.masks.sum(axis=1).tolist() == budgets
    assert result.masks.any(axis=0).sum() > own.any(axis=0).sum()
    assert np.var(result.masks.sum(axis=0)) < np.var(own.sum(axis=0))


def test_a_client_with_invalid_scores_gets_a_fallback_and_the_round_goes_on(small_run_config):
    def tamper(evaluate):
        def wrapped(msg, context):
            reply = evaluate(msg, context)
            if context.node_config["partition-id"] == 1 and "scores" in reply.content:
                scores = list(reply.content.metric_records["scores"]["scores"])
                scores[0] = float("nan")
                old = reply.content.metric_records["scores"]
                reply.content.metric_records["scores"] = MetricRecord({**old, "scores": scores})
            return reply

        return wrapped

    config = dict(small_run_config, **{"num-server-rounds": 1, "selection.budget": "2"})
    _, rows = run_server_app(config, num_nodes=3, wrap={MessageType.EVALUATE: tamper})
    out = f"{config['output-dir']}/{config['run-name']}"
    selection = [json.loads(line) for line in Path(f"{out}/selection.jsonl").read_text().splitlines()]
    assert selection[0]["invalid_clients"] == ["easy-vqa/1"]
    assert selection[0]["scored_clients"] == ["easy-vqa/0", "easy-vqa/2"]
    assert len(rows[1]["assignment"]["easy-vqa/1"]) == 2  # a random set within its budget
    assert set(rows[1]["bytes_up"]) == {"easy-vqa/0", "easy-vqa/1", "easy-vqa/2"}
