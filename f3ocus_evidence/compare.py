"""``f3ocus-compare``: run the paper's comparison (methods x seeds on one task setting) and write its
table and figures.

Every cell of the grid is one complete run of the project's ServerApp and ClientApp: by default in
this process (:mod:`f3ocus_evidence.inprocess`: ``server_app.app.main`` driving ``client_app.app``'s
handlers, no SuperLink, so no 30-60 s start-up per cell), or with ``--runner simulation`` through
``flwr run`` in Flower's simulation with a Flower home of the grid's own. A cell lives in
``<output>/<name>/cells/<method>-seed<k>/`` (the run's usual outputs); it counts as finished when its
``config.json`` holds the run config the grid asks for and its ``metrics.jsonl`` reaches the last
round, so a second call redoes only the unfinished cells. The table and figures are written by
:mod:`f3ocus_evidence.results`; docs/results.md explains the default setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.contrib.logging import logging_redirect_tqdm

from f3ocus_core.progress import progress_bar
from f3ocus_evidence.results import (
    METHODS,
    build_table,
    cell_result,
    is_method,
    method_named,
    plot_curves,
    plot_tradeoff,
    read_rows,
    write_table,
)

if TYPE_CHECKING:
    from f3ocus_core.tracking import GridTracking

ROOT = Path(__file__).resolve().parents[1]

#: The setting of the default grid (docs/results.md, "The shifted setting", says why): 8 clients that
#: differ as hospitals do. The base is pretrained without the negated questions; clients 1, 3, 5, 7
#: see inverted images (another scanner), clients 2, 3, 6, 7 ask the negated questions the base never
#: learned, so the four kinds of client need different layers (benchmarks/probe_layers.py).
SETTING = {
    "model.name": "builtin:tiny-vilt-easyvqa",
    "model.pretrain-exclude": "negation",
    "data.partitioning": "iid",
    "data.shift": "none,invert,none,invert,none,invert,none,invert",
    "data.questions": "all-negation,all-negation,all,all,all-negation,all-negation,all,all",
    "data.max-train-per-client": 256,
    "data.max-test-per-client": 128,
    "selection.budget": "2",
    "train.local-epochs": 3,
    "train.lr": 0.01,
}
CLIENTS = 8
ROUNDS = 3
SEEDS = (0, 1, 2, 3, 4)
METHOD_NAMES = (
    "f3ocus-nsga2",
    "f3ocus-exact",
    "lntk-alone",
    "fd",
    "last",
    "grasp",
    "spt",
    "all-layers",
    "heads-only",
    "local-only",
)
#: ``--quick``: fewer rows and seeds in the same setting (about 6 minutes on 2 cores).
QUICK: dict[str, Any] = {
    "methods": ("f3ocus-nsga2", "lntk-alone", "all-layers", "heads-only"),
    "seeds": (0, 1),
    "rounds": 3,
    "run_config": {},
}

log = logging.getLogger("f3ocus_compare")


def shipped_run_config() -> dict:
    """``[tool.flwr.app.config]`` of the project's pyproject.toml: what ``flwr run .`` starts from."""
    path = ROOT / "pyproject.toml"
    if not path.exists():
        raise SystemExit(f"f3ocus-compare needs the project's pyproject.toml at {path} (run it from a checkout).")
    return dict(tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"])


def parse_overrides(text: str) -> dict:
    """``"key=value key2='text'"`` (TOML values, as ``flwr run --run-config``) -> a flat dict."""
    if not text.strip():
        return {}
    lines = []
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--run-config: {item!r} is not key=value.")
        lines.append(f'"{key}" = {value}')
    try:
        return tomllib.loads("\n".join(lines))
    except tomllib.TOMLDecodeError as error:
        raise SystemExit(f"--run-config: {error}; strings need quotes: selection.algorithm='aco'.") from None


def toml_value(value: object) -> str:
    """A run-config value as TOML text (for ``flwr run --run-config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _same(stored: object, wanted: object) -> bool:
    if isinstance(wanted, int | float) and not isinstance(wanted, bool) and isinstance(stored, int | float):
        return float(stored) == float(wanted)
    return stored == wanted


def is_finished(folder: Path, config: dict) -> bool:
    """Whether the run in ``folder`` ran with ``config`` (every key equal) up to its last round."""
    record = folder / "config.json"
    rows = read_rows(folder)
    if not record.exists() or not rows:
        return False
    stored = json.loads(record.read_text()).get("run_config", {})
    if any(not _same(stored.get(key), value) for key, value in config.items() if key != "output-dir"):
        return False
    return max(row["round"] for row in rows) >= int(config["num-server-rounds"])


def num_layers(config: dict) -> int:
    """The layer count of the model ``config`` names (loads it once; builds a built-in base if missing)."""
    from f3ocus_core.config import parse_run_config
    from f3ocus_core.importance import SCORERS
    from f3ocus_core.selection import ALGORITHMS
    from f3ocus_flower.model_setup import model_path, set_up_model

    settings = parse_run_config(config, SCORERS, ALGORITHMS)
    return len(set_up_model(model_path(settings), settings.peft).layer_map)


def run_inprocess(config: dict, clients: int, folder: Path) -> None:
    """One cell through :func:`f3ocus_evidence.inprocess.run_server_app`; client state under the cell."""
    from f3ocus_evidence.inprocess import run_server_app

    run_server_app(config, clients, state_dir=str(folder / "client-state"))


def run_simulation(config: dict, clients: int, folder: Path, flwr_home: Path, threads: int = 1) -> None:
    """One cell through ``flwr run`` in Flower's simulation (its own Flower home), then stop the
    SuperLink that ``flwr run`` started (found by that Flower home, as scripts/run-simulation.sh does)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {clients}\noptions.backend.client-resources.num-cpus = 1\n"
    )
    env = dict(
        os.environ,
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        OMP_NUM_THREADS=str(threads),
    )
    overrides = " ".join(f"{key}={toml_value(value)}" for key, value in config.items())
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    if flwr is None:
        raise SystemExit("--runner simulation needs the `flwr` command (pip install flwr[simulation]).")
    try:
        with (folder.parent / f"{folder.name}.log").open("w") as out:
            subprocess.run(
                [flwr, "run", str(ROOT), "--stream", "--run-config", overrides],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
    finally:
        found = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}/"], capture_output=True, text=True)
        for pid in found.stdout.split():
            subprocess.run(["kill", pid], check=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="f3ocus-compare",
        description="Run methods x seeds on one task setting and write the comparison "
        "(table.md, table.csv, curves.png, tradeoff.png) to OUTPUT/NAME. A second call resumes: finished "
        "cells are kept.",
    )
    parser.add_argument("--name", default="", help="results folder name (default: 'default' or 'quick')")
    parser.add_argument("--output", default="results", help="where results/<name> goes (default: results)")
    parser.add_argument("--task", default="", help="the task (run-config key `task`; default: easy-vqa)")
    parser.add_argument(
        "--run-config",
        default="",
        help="run-config overrides on top of the grid's setting, "
        "as for flwr run: \"data.alpha=1.0 selection.budget='3'\"",
    )
    parser.add_argument(
        "--methods", default="", help=f"comma-separated; any of {', '.join(METHODS)}; default: {','.join(METHOD_NAMES)}"
    )
    parser.add_argument(
        "--seeds", default="", help="comma-separated seeds (default: " + ",".join(map(str, SEEDS)) + ")"
    )
    parser.add_argument("--rounds", type=int, default=0, help=f"federated rounds (default: {ROUNDS})")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"number of clients (default: {CLIENTS})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the short grid: "
        f"{len(QUICK['methods'])} methods x {len(QUICK['seeds'])} seeds x {QUICK['rounds']} rounds",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="start from the shipped run config only, without the grid's setting (e.g. the tiny 4-layer default)",
    )
    parser.add_argument(
        "--base-seed", type=int, default=0, help="seed of the built-in base checkpoint all cells start from (default 0)"
    )
    parser.add_argument(
        "--runner",
        choices=("inprocess", "simulation"),
        default="inprocess",
        help="inprocess (default): the apps in this process; simulation: one `flwr run` per cell",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (default 1: on a shared "
        "or busy CPU more threads can make each step many times slower)",
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: write the table and figures from the cells finished so far",
    )
    parser.add_argument("--verbose", action="store_true", help="show the apps' per-round log")
    parser.add_argument(
        "--tracking",
        default="",
        help="also log every finished cell as a run of one experiment "
        "(method and seed as tags) and the table as an artifact: mlflow, tensorboard or "
        "mlflow,tensorboard (pip install '.[tracking]'; docs/tracking.md)",
    )
    parser.add_argument(
        "--tracking-uri",
        default="",
        help="an MLflow address (http://host:5000) or a folder; "
        "default: the grid's folder (mlflow.db, mlartifacts/, tensorboard/)",
    )
    parser.add_argument(
        "--tracking-experiment", default="", help="the MLflow experiment (default: f3ocus-compare-NAME)"
    )
    return parser.parse_args(argv)


def grid_plan(args: argparse.Namespace) -> tuple[str, dict, list[str], list[int], int]:
    """The grid's name, base run config, methods, seeds and rounds from the arguments."""
    quick = args.quick
    name = args.name or ("quick" if quick else "default")
    methods = [m for m in args.methods.split(",") if m] or list(QUICK["methods"] if quick else METHOD_NAMES)
    unknown = [m for m in methods if not is_method(m)]
    if unknown:
        raise SystemExit(
            f"--methods: unknown {unknown}; choose from {list(METHODS)} or fixed-<i>+<j> (every "
            "client the same layers)."
        )
    seeds = [int(s) for s in args.seeds.split(",") if s] or list(QUICK["seeds"] if quick else SEEDS)
    rounds = args.rounds or (QUICK["rounds"] if quick else ROUNDS)
    config = shipped_run_config()
    if not args.plain:
        config.update(SETTING)
        if quick:
            config.update(QUICK["run_config"])
    if args.task:
        config["task"] = args.task
    config.update(parse_overrides(args.run_config))
    config.update({"num-server-rounds": rounds, "min-clients": args.clients})
    args.model = config["model.name"]
    config["model.name"] = base_model(config, args.base_seed)
    if config["model.name"] != args.model:  # the folder already holds what model.pretrain-exclude asked for
        config["model.pretrain-exclude"] = ""
    return name, config, methods, seeds, rounds


def base_model(config: dict, seed: int) -> str:
    """``model.name`` for every cell: a built-in name becomes the folder of its base checkpoint built
    with ``seed`` (once, cached), so that all seeds of the grid fine-tune the same pretrained model, as
    the paper's runs all start from one pretrained checkpoint; a run with a built-in name would build
    one base per run seed."""
    from f3ocus_core.config import parse_pretrain_exclude
    from f3ocus_core.pretrain import resolve_model_path

    name = str(config["model.name"])
    if not name.startswith("builtin:"):
        return name
    exclude = parse_pretrain_exclude(str(config.get("model.pretrain-exclude", "")))
    return resolve_model_path(
        name, str(config.get("model.cache-dir", "")), int(config["model.pretrain-steps"]), seed, exclude
    )


_LINES = logging.StreamHandler(sys.stdout)
"""The handler that prints the grid's lines (one per cell) on standard output."""
_LINES.setFormatter(logging.Formatter("%(message)s"))


def main(argv: list[str] | None = None) -> int:
    """Run the grid (skipping finished cells), then write the table and figures."""
    import flwr.common.logger  # noqa: F401  (sets Flower's log level on import: import before changing it)
    import torch

    args = parse_args(argv)
    if _LINES not in log.handlers:
        log.addHandler(_LINES)
    _LINES.stream = sys.stdout  # today's stdout (not setStream: it flushes the old one, which may be closed)
    log.setLevel(logging.INFO)
    flwr_logger, threads = logging.getLogger("flwr"), torch.get_num_threads()
    flwr_level = flwr_logger.level
    if not args.verbose:
        flwr_logger.setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        name, base, methods, seeds, rounds = grid_plan(args)  # may build the base checkpoint
        with logging_redirect_tqdm(loggers=[log]):  # log lines above the progress bar, not through it
            return _run_grid(args, argv, name, base, methods, seeds, rounds)
    finally:
        flwr_logger.setLevel(flwr_level)
        torch.set_num_threads(threads)


def _run_grid(
    args: argparse.Namespace,
    argv: list[str] | None,
    name: str,
    base: dict,
    methods: list[str],
    seeds: list[int],
    rounds: int,
) -> int:
    out = Path(args.output).resolve() / name
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    layers = num_layers(base) if any("all" in method_named(m).overrides.values() for m in methods) else 0
    plan = {m: method_named(m).run_config(layers) for m in methods}
    grid = {
        "model": args.model,
        "base_run_config": base,
        "methods": plan,
        "seeds": seeds,
        "rounds": rounds,
        "clients": args.clients,
        "runner": args.runner,
    }
    (out / "grid.json").write_text(json.dumps(grid, indent=2) + "\n")
    cells, total = [], len(methods) * len(seeds)
    tracker = _grid_tracking(args, name, out)
    grid_cells = progress_bar(total, f"grid {name}", "cell", ((s, m) for s in seeds for m in methods))
    for index, (seed, method) in enumerate(grid_cells, start=1):
        folder = cells_dir / f"{method}-seed{seed}"
        config = {
            **base,
            **plan[method],
            "seed": seed,
            "output-dir": str(cells_dir),
            "run-name": folder.name,
            "resume": "",
        }
        if is_finished(folder, config):
            state = "kept (finished before)"
        elif args.table_only:
            log.info("[%d/%d] %s seed %d: not finished, left out of the table", index, total, method, seed)
            continue
        else:
            shutil.rmtree(folder, ignore_errors=True)
            cell_started = time.perf_counter()
            if args.runner == "simulation":
                run_simulation(config, args.clients, folder, out / ".flwr", args.threads)
            else:
                run_inprocess(config, args.clients, folder)
            state = f"ran in {time.perf_counter() - cell_started:.0f} s"
        result = cell_result(method, seed, folder)
        cells.append(result)
        if tracker is not None and tracker.log_cell(folder, method, seed):
            state += f", logged to {args.tracking}"
        log.info(
            "[%d/%d] %s seed %d: %s %.4f after round %d, %s",
            index,
            total,
            method,
            seed,
            result.metric_name,
            result.final,
            len(result.curve) - 1,
            state,
        )
    if not cells:
        raise SystemExit(f"No finished cell in {cells_dir}; run the grid without --table-only first.")
    rows = build_table(cells, methods)
    command = shlex.join(["f3ocus-compare", *(argv if argv is not None else sys.argv[1:])])
    header = (
        f"# {name}\n\n`{command.strip()}`: {len(cells)} of {total} runs ({len(methods)} methods x "
        f"{len(seeds)} seeds) x {rounds} rounds, "
        f"{args.clients} clients, task {base['task']}, model {args.model} (base seed {args.base_seed}), "
        f"budget {base['selection.budget']}. Run configs: grid.json and each run's config.json."
    )
    write_table(rows, out, header)
    plot_curves(cells, methods, out / "curves.png")
    plot_tradeoff(rows, out / "tradeoff.png")
    if tracker is not None:
        tracker.log_table(
            {name: out / name for name in ("table.md", "table.csv", "curves.png", "tradeoff.png", "grid.json")}
        )
    log.info("Grid done in %.0f s: %s", time.perf_counter() - started, out / "table.md")
    return 0


def _grid_tracking(args: argparse.Namespace, name: str, out: Path) -> GridTracking | None:
    """The grid's :class:`~f3ocus_core.tracking.GridTracking` for ``--tracking`` (None without it)."""
    from f3ocus_core.errors import ConfigError
    from f3ocus_core.tracking import GridTracking, TrackingSettings, parse_trackers

    try:
        trackers = parse_trackers(args.tracking)
        if not trackers:
            return None
        settings = TrackingSettings(
            trackers, args.tracking_uri or str(out), args.tracking_experiment or f"f3ocus-compare-{name}"
        )
        return GridTracking(settings, name, out)
    except ConfigError as error:
        raise SystemExit(f"f3ocus-compare --tracking: {error}") from None


if __name__ == "__main__":
    raise SystemExit(main())
