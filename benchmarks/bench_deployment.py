"""Round time of a loopback deployment next to the same run in Flower's simulation.

The same small federated run (the shipped defaults with ``--rounds`` rounds, ``--clients`` clients and
small data caps, so that it finishes in minutes on a laptop) runs once per mode, each with its own
Flower home, working folder and ``F3OCUS_CACHE`` (so a deployment's nodes start cold):

- ``deployment``: ``flower-superlink --insecure`` plus ``--clients`` ``flower-supernode`` processes
  (``--node-config "partition-id=I num-partitions=N"``, default ``--isolation subprocess``: Flower runs
  each message in a fresh ``flwr-clientapp`` process, which hands it to the node's warm worker,
  :mod:`client_app.worker`), then ``flwr run . <connection>``; every process is started here and
  stopped by PID;
- ``deployment-cold``: the same with ``F3OCUS_WARM=0`` on the nodes (each message does all its work
  in its own process, as before warm workers);
- ``simulation``: ``flwr run .`` on Flower's local simulation (``--clients`` SuperNodes,
  ``--sim-cpus`` CPUs per client);
- ``fedavg-deployment``, ``fedavg-simulation``: the same two set-ups running a minimal Flower app
  written for the bench (``benchmarks/fedavg_app``: Flower's own ``FedAvg`` strategy and a
  ``flwr new``-style ClientApp on the same model, data and loops, two exchanges per round, every
  layer trained, no warm worker). Its deployed-minus-simulated round time is Flower's floor for a
  two-exchange round on this model; F3OCUS's deployed-minus-simulated round is printed next to it.

All use one prebuilt base checkpoint (``model.cache-dir``) and skip Flower's runtime dependency
installation. Per-phase times are the server's own (``outputs/<run>/metrics.jsonl``:
``seconds_select``, ``seconds_train``, ``seconds_eval``, ``seconds_round``; ``seconds_query`` is 0, as a
round has no query exchange but in a resumed run); round 0
(evaluating the starting model) carries the nodes' cold start and is shown but not counted. For a
warm deployment each phase is split into the slowest node's time in its worker (the worker logs it)
and the rest, Flower's transport. ``--profile`` first times the steps of one cold message. The ratio
is mean ``seconds_round`` over rounds 1..R of the deployment over that of the simulation.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_deployment.py`` (a few minutes on 2 cores;
``--modes deployment,simulation`` leaves out the FedAvg floor).
``--run-config "key=value ..."`` adds run-config overrides (e.g. the shipped data caps:
``"data.max-train-per-client=800 data.max-test-per-client=200 train.local-epochs=2"``).
The last line is ``deployment/simulation round-time ratio: <x>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.flwr_process import (  # noqa: E402
    BIN,
    flower_env,
    free_port,
    processes_mentioning,
    stop,
    toml_value,
    wait_for_log,
    write_connection,
)

PHASES = ("seconds_query", "seconds_select", "seconds_train", "seconds_eval", "seconds_round")


def run_config(args: argparse.Namespace, out_dir: Path, cache_dir: Path) -> str:
    """The ``--run-config`` string shared by both runs."""
    config = {
        "num-server-rounds": args.rounds,
        "run-name": "bench",
        "output-dir": str(out_dir),
        "model.cache-dir": str(cache_dir),
        "model.pretrain-steps": args.pretrain_steps,
        "data.max-train-per-client": args.max_train,
        "data.max-test-per-client": args.max_test,
        "train.local-epochs": args.local_epochs,
        "train.batch-size": args.batch_size,
    }
    text = " ".join(f"{key}={toml_value(value)}" for key, value in config.items())
    return f"{text} {args.run_config}".strip()


def read_rows(out_dir: Path) -> list[dict]:
    metrics = out_dir / "bench" / "metrics.jsonl"
    if not metrics.exists():
        raise RuntimeError(f"{metrics} was not written; see the logs beside it.")
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def flwr_run(
    args: argparse.Namespace, work: Path, env: dict, config: str, connection: str | None, label: str, app: Path = ROOT
) -> None:
    """``flwr run APP [connection] --stream``, its output kept in ``work/flwr-run.log``; raises on failure."""
    command = [
        str(BIN / "flwr"),
        "run",
        str(app),
        *([connection] if connection else []),
        "--stream",
        "--run-config",
        config,
    ]
    result = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=args.timeout)
    (work / "flwr-run.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def simulate(args: argparse.Namespace, work: Path, cache_dir: Path, app: Path = ROOT) -> list[dict]:
    """``flwr run APP`` in the local simulation; returns the metrics rows."""
    home = work / "flwr-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {args.clients}\n"
        f"options.backend.client-resources.num-cpus = {args.sim_cpus}\n"
    )
    env = {**flower_env(home), "F3OCUS_CACHE": str(work / "f3ocus-cache"), "PYTHONPATH": str(ROOT)}
    out = work / "outputs"
    try:
        flwr_run(args, work, env, run_config(args, out, cache_dir), None, "simulation", app)
    finally:
        stop(processes_mentioning(str(home)))
    return read_rows(out)


def deploy(args: argparse.Namespace, work: Path, cache_dir: Path, warm: bool = True, app: Path = ROOT) -> list[dict]:
    """SuperLink + ``--clients`` SuperNodes on loopback, then ``flwr run . <connection>``; with
    ``warm=False`` the nodes run with ``F3OCUS_WARM=0`` (every message in its own process)."""
    home = work / "flwr-cli"
    link_port = free_port()
    write_connection(home, "bench", f"127.0.0.1:{link_port}")
    env = {
        **flower_env(home),
        "F3OCUS_CACHE": str(work / "f3ocus-cache"),
        "F3OCUS_WARM": "1" if warm else "0",
        "PYTHONPATH": str(ROOT),
    }
    # Each node gets its share of the cores, as the simulation gives each client --sim-cpus (Ray sets
    # OMP_NUM_THREADS per client): two nodes on one host must not both compute with every core.
    env["OMP_NUM_THREADS"] = str(max(1, int(args.sim_cpus)))
    if args.superexec_poll:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.superexec_poll)
    processes: list[subprocess.Popen] = []
    logs = work / "logs"
    logs.mkdir(parents=True)

    def start(name: str, command: list[str]) -> subprocess.Popen:
        cwd = work / name
        cwd.mkdir()
        with open(logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env={**env, "FLWR_HOME": str(cwd / ".flwr")},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(process)
        return process

    out = work / "outputs"
    try:
        link = start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--port",
                str(link_port),
                "--database",
                str(work / "state.db"),
            ],
        )
        if not wait_for_log(logs / "superlink.log", "Starting the SuperLink Fleet HTTP API", 60, link):
            raise RuntimeError((logs / "superlink.log").read_text())
        for node in range(args.clients):
            start(
                f"supernode-{node}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={node} num-partitions={args.clients}",
                ],
            )
        flwr_run(args, work, env, run_config(args, out, cache_dir), "bench", "deployment", app)
    finally:
        stop([process.pid for process in processes[1:]])
        if processes:
            stop([processes[0].pid])
        for process in processes:
            process.wait(timeout=30)
            # What a node started in its session (its SuperExec, a ClientApp) goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    return read_rows(out)


#: Steps of one cold message, each timed in a fresh interpreter after the ones before it.
PROFILE = r"""
import json, sys, time
from pathlib import Path
times = {}
start = time.perf_counter()
def lap(name):
    global start
    now = time.perf_counter(); times[name] = now - start; start = now
import flwr.app, flwr.clientapp
lap("import flwr")
import client_app.warm
lap("import client_app.warm (the front)")
import client_app.app as full
lap("import client_app.app (torch, transformers, peft, datasets)")
from f3ocus_core.config import parse_run_config
from f3ocus_core.data.cache import cached_client_data
from f3ocus_core.data.tasks import load_client_data
settings = parse_run_config(json.loads(sys.argv[1]))
load_client_data(settings.data, 0, 2)
lap("prepare client data (no cache)")
cached_client_data(settings.data, 0, 2, sys.argv[2])
lap("prepare again (sources read) + store in the data cache")
cached_client_data(settings.data, 0, 2, sys.argv[2])
lap("load from the data cache")
full._pristine(full.model_path(settings), settings.peft)
lap("load the model, attach units")
print(json.dumps(times))
"""


def profile_message(args: argparse.Namespace, work: Path, cache_dir: Path) -> dict[str, float]:
    """Seconds of each step of a cold message (:data:`PROFILE`), in a fresh interpreter."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    overrides = {
        "model.cache-dir": str(cache_dir),
        "model.pretrain-steps": args.pretrain_steps,
        "data.max-train-per-client": args.max_train,
        "data.max-test-per-client": args.max_test,
    }
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interpreter = time.perf_counter() - started
    result = subprocess.run(
        [sys.executable, "-c", PROFILE, json.dumps({**config, **overrides}), str(work / "profile-data-cache")],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return {"start the interpreter": interpreter, **json.loads(result.stdout.strip().splitlines()[-1])}


_HANDLED = re.compile(r"f3ocus warm worker \d+: (query|train|evaluate) handled in ([0-9.]+) s")
_PHASE_KEY = {"query": "seconds_query", "train": "seconds_train", "evaluate": "seconds_eval"}


def worker_seconds(logs: Path) -> dict[tuple[int, str], float]:
    """Per (round, phase key), the slowest node's time in its warm worker, from the nodes' logs
    (the k-th ``evaluate`` of a node is round k's, the k-th ``query``/``train`` round k+1's)."""
    slowest: dict[tuple[int, str], float] = {}
    for log in sorted(logs.glob("supernode-*.log")):
        seen = {"query": 0, "train": 0, "evaluate": 0}
        for kind, seconds in _HANDLED.findall(log.read_text(errors="replace")):
            server_round = seen[kind] + (0 if kind == "evaluate" else 1)
            seen[kind] += 1
            key = (server_round, _PHASE_KEY[kind])
            slowest[key] = max(slowest.get(key, 0.0), float(seconds))
    return slowest


def show_overhead(rows: list[dict], handled: dict[tuple[int, str], float]) -> None:
    """The server's phase time next to the slowest node's time in its worker: the rest is Flower's
    transport (polling, the one-message process, moving the objects). Nothing without workers."""
    if not handled:
        return
    print("\ndeployment: server's phase time = slowest node's warm-worker time + Flower's transport (s)")
    for row in rows:
        cells = []
        for kind, key in _PHASE_KEY.items():
            if row.get(key) and (row["round"], key) in handled:
                work = handled[(row["round"], key)]
                cells.append(f"{kind} {row[key]:6.2f} = {work:6.2f} + {row[key] - work:5.2f}")
        print(f"round {row['round']}: " + " | ".join(cells))
    later = [
        row[key] - handled[(row["round"], key)]
        for row in rows
        if row["round"] >= 1
        for key in _PHASE_KEY.values()
        if (row["round"], key) in handled
    ]
    if later:
        print(
            f"transport per phase, rounds >= 1: mean {sum(later) / len(later):.2f} s, "
            f"min {min(later):.2f} s, max {max(later):.2f} s"
        )


def mean_round(rows: list[dict], key: str = "seconds_round") -> float:
    later = [row.get(key, 0.0) for row in rows if row["round"] >= 1]
    return sum(later) / len(later)


def show(name: str, rows: list[dict]) -> None:
    print(f"\n{name}: per round (s)")
    print("round " + " ".join(f"{key.removeprefix('seconds_'):>9s}" for key in PHASES) + "  accuracy")
    for row in rows:
        accuracy = row.get("accuracy")
        print(
            f"{row['round']:5d} "
            + " ".join(f"{row.get(key, 0.0):9.2f}" for key in PHASES)
            + (f"  {accuracy:.3f}" if accuracy is not None else "")
        )
    print(" mean " + " ".join(f"{mean_round(rows, key):9.2f}" for key in PHASES) + "  (rounds >= 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--max-train", type=int, default=64, help="data.max-train-per-client")
    parser.add_argument("--max-test", type=int, default=32, help="data.max-test-per-client")
    parser.add_argument("--local-epochs", type=int, default=1, help="train.local-epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="train.batch-size")
    parser.add_argument("--pretrain-steps", type=int, default=30, help="model.pretrain-steps of the base checkpoint")
    parser.add_argument("--sim-cpus", type=float, default=1, help="simulation: CPUs per client (1: both at once)")
    parser.add_argument("--run-config", default="", help="further run-config overrides, TOML 'key=value ...'")
    parser.add_argument(
        "--modes",
        default="deployment,simulation,fedavg-deployment,fedavg-simulation",
        help="which runs, in order: deployment, simulation, deployment-cold (F3OCUS_WARM=0), "
        "fedavg-deployment, fedavg-simulation",
    )
    parser.add_argument("--work-dir", default="", help="keep logs and outputs here (default: a temporary folder)")
    parser.add_argument(
        "--superexec-poll",
        type=float,
        default=0.0,
        help="deployment: FLWR_SUPEREXEC_TASK_POLL_INTERVAL of the nodes (0: Flower's default, 1 s)",
    )
    parser.add_argument("--profile", action="store_true", help="first time the steps of one cold message")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-deployment-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}")
    cache_dir = work / "model-cache"
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from f3ocus_core.pretrain import ensure_base_checkpoint; "
            f"ensure_base_checkpoint(sys.argv[1], steps={args.pretrain_steps}, seed=0)",
            str(cache_dir),
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
    )
    print(f"base checkpoint ready ({time.perf_counter() - started:.1f} s)")

    if args.profile:
        print("\none cold message, step by step (s):")
        for step, seconds in profile_message(args, work, cache_dir).items():
            print(f"  {seconds:6.2f}  {step}")

    from benchmarks.fedavg_app.server_app import write_app

    fedavg = write_app(work / "fedavg-app", ROOT)
    runs = {
        "simulation": simulate,
        "deployment": deploy,
        "deployment-cold": lambda *a: deploy(*a, warm=False),
        "fedavg-simulation": lambda *a: simulate(*a, app=fedavg),
        "fedavg-deployment": lambda *a: deploy(*a, app=fedavg),
    }
    rows: dict[str, list[dict]] = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        started = time.perf_counter()
        rows[mode] = runs[mode](args, work / mode, cache_dir)
        print(f"{mode}: {time.perf_counter() - started:.1f} s wall, logs in {work / mode}")
        show(mode, rows[mode])
        if mode.startswith("deployment") or mode == "fedavg-deployment":
            show_overhead(rows[mode], worker_seconds(work / mode / "logs"))
    if "simulation" in rows and "deployment-cold" in rows:
        ratio = mean_round(rows["deployment-cold"]) / mean_round(rows["simulation"])
        print(f"\ndeployment-cold (F3OCUS_WARM=0)/simulation round-time ratio: {ratio:.2f}")
    if all(mode in rows for mode in ("simulation", "deployment", "fedavg-simulation", "fedavg-deployment")):
        ours = mean_round(rows["deployment"]) - mean_round(rows["simulation"])
        floor = mean_round(rows["fedavg-deployment"]) - mean_round(rows["fedavg-simulation"])
        print(
            f"\ndeployed minus simulated round (s): F3OCUS {ours:.2f}, Flower FedAvg {floor:.2f} "
            f"(F3OCUS/FedAvg: {ours / floor:.2f}; within 10% of the floor: {abs(ours - floor) <= 0.1 * floor})"
        )
    if "simulation" in rows and "deployment" in rows:
        ratio = mean_round(rows["deployment"]) / mean_round(rows["simulation"])
        print(f"\ndeployment/simulation round-time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
