"""FedAvg's ServerApp, as ``flwr new`` writes one (Flower's own ``FedAvg`` strategy), which also
writes each round's phase times to ``<output-dir>/<run-name>/metrics.jsonl`` in the keys F3OCUS
uses, so that ``bench_deployment.py`` reads both apps alike.

It runs ``num-server-rounds + 1`` rounds and records the first as round 0: that round carries the
clients' cold start (imports, data, model), which F3OCUS's round-0 evaluation carries in its run,
and the bench counts rounds 1.. of both."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from f3ocus_core.config import parse_run_config
from f3ocus_core.peft_units import get_state
from f3ocus_flower.model_setup import model_path, set_up_model
from f3ocus_flower.protocol import state_to_record

app = ServerApp()


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, timing each round's train and evaluate exchanges."""

    def __init__(self, rows_file: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows_file = rows_file
        self.times: dict[str, float] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.times = {"started": time.perf_counter()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        self.times["trained"] = time.perf_counter()
        return super().aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        self.times["evaluating"] = time.perf_counter()
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        metrics = super().aggregate_evaluate(server_round, replies)
        ended, t = time.perf_counter(), self.times
        row = {
            "round": server_round - 1,
            "seconds_train": t["trained"] - t["started"],
            "seconds_eval": ended - t["evaluating"],
            "seconds_round": ended - t["started"],
            "accuracy": None if metrics is None else metrics.get("accuracy"),
        }
        with self.rows_file.open("a") as rows:
            rows.write(json.dumps(row) + "\n")
        return metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = parse_run_config(context.run_config)
    setup = set_up_model(model_path(settings), settings.peft, settings.seed)
    out = Path(settings.output_dir) / settings.run_name
    out.mkdir(parents=True, exist_ok=True)
    clients = max(2, settings.min_clients)
    strategy = TimedFedAvg(
        out / "metrics.jsonl", min_train_nodes=clients, min_evaluate_nodes=clients, min_available_nodes=clients
    )
    strategy.start(
        grid=grid,
        initial_arrays=state_to_record(get_state(setup.model, setup.units.all_keys())),
        num_rounds=settings.num_rounds + 1,
        train_config=ConfigRecord({}),
    )


def write_app(folder: Path, root: Path) -> Path:
    """A Flower app folder holding this app, with F3OCUS's run config (so ``--run-config`` takes the
    same keys) and ``root`` importable through ``PYTHONPATH`` set by the caller."""
    import shutil
    import tomllib

    package = folder / "fedavg_bench"
    package.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    for name in ("__init__.py", "client_app.py", "server_app.py"):
        shutil.copy(here / name, package / name)
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    lines = [f"{json.dumps(key)} = {json.dumps(value)}" for key, value in config.items()]
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "fedavg-bench"\nversion = "1.0.0"\ndependencies = []\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["fedavg_bench"]\n\n'
        '[tool.flwr.app]\npublisher = "f3ocus"\n\n'
        '[tool.flwr.app.components]\nserverapp = "fedavg_bench.server_app:app"\n'
        'clientapp = "fedavg_bench.client_app:app"\n\n[tool.flwr.app.config]\n' + "\n".join(lines) + "\n"
    )
    return folder
