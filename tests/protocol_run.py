"""The fixed small run whose figures the two-exchange protocol must reproduce (issue 20).

:func:`protocol_run` runs the ServerApp in process on the default tiny model (3 clients, 3 rounds,
two local steps) and returns what a protocol change must not move: the assignment of every round
and the final global units. ``tests/fixtures/three_exchange_run.npz`` holds the same figures from the
three-exchange protocol (query, train, evaluate) at commit 6f68929 (the last with that protocol, on
the recipe-v2 base), written by running this module as a script there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from f3ocus_core.checkpoint import load_checkpoint
from tests.inprocess_grid import run_server_app

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "three_exchange_run.npz"


def protocol_config(small_run_config: dict) -> dict:
    """``small_run_config`` (tests/conftest.py) for 3 rounds of 2 local steps, budget 2 of the layers."""
    return dict(small_run_config, **{"num-server-rounds": 3, "run-name": "protocol", "train.max-steps": 2})


def protocol_run(
    config: dict, num_nodes: int = 3
) -> tuple[dict[int, dict[str, list[int]]], dict[str, np.ndarray], list]:
    """Run ``config``; return the assignment per round (client name -> layer ids), the final global
    units and the grid's calls ``(node, message type)``."""
    grid, rows = run_server_app(config, num_nodes=num_nodes)
    assignments = {
        int(row["round"]): {name: list(layers) for name, layers in row["assignment"].items()}
        for row in rows
        if row["round"]
    }
    units = load_checkpoint(Path(config["output-dir"]) / config["run-name"]).units
    return assignments, units, grid.calls


def load_fixture() -> tuple[dict[int, dict[str, list[int]]], dict[str, np.ndarray]]:
    """The three-exchange run's assignments and final units."""
    with np.load(FIXTURE) as saved:
        assignments = {int(r): a for r, a in json.loads(str(saved["assignments"])).items()}
        units = {key[len("unit/") :]: saved[key] for key in saved.files if key.startswith("unit/")}
    return assignments, units


if __name__ == "__main__":  # python -m tests.protocol_run OUT_DIR: write the fixture from this checkout
    import tomllib

    from f3ocus_core.pretrain import ensure_base_checkpoint
    from tests.conftest import small_overrides

    root = Path(sys.argv[1])
    cache = root / "model-cache"
    ensure_base_checkpoint(cache, steps=30, seed=0)
    base = dict(
        tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
            "config"
        ]
    )
    base.update(small_overrides(root, cache))
    assignments, units, _ = protocol_run(protocol_config(base))
    np.savez_compressed(FIXTURE, assignments=json.dumps(assignments), **{f"unit/{k}": v for k, v in units.items()})
    print(json.dumps(assignments), sum(v.size for v in units.values()), "unit values")
