"""How a simulated federation's round time and memory grow with the number of clients.

The tiny default (``builtin:tiny-vilt-easyvqa`` on easy-vqa, small data caps per client) runs in
Flower's local simulation (Ray backend, ``options.backend.client-resources.num-cpus`` per client in
the federation config) once per ``--clients`` count, and optionally once more per count with
``clients-per-round`` (``--clients-per-round K``: each round a seeded sample of K clients is queried
and trained; every client evaluates). Each run has its own Flower home and outputs; all share one
prebuilt base checkpoint (built before the first run, not timed).

Printed per run: the mean wall time of rounds 1..R (``seconds_round`` of ``metrics.jsonl``, the
server's own clock: query, selection, train, evaluate), round 0 (evaluating the starting model on
every client, which also carries the clients' cold start), the whole `flwr run`, and the peak memory
of the simulation's process tree (the SuperLink `flwr run` starts, its ServerApp, Ray and its
workers): the sum over the tree's processes of their proportional set size (PSS: shared pages split
among the processes that map them), sampled every ``--sample-every`` seconds.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py`` (4, 16 and 64 clients, 2 rounds;
tens of minutes on 2 cores). ``--clients 4,16 --rounds 1`` for a quick look.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.flwr_process import BIN, flower_env, processes_mentioning, stop, toml_value  # noqa: E402


def run_config(args: argparse.Namespace, out_dir: Path, cache_dir: Path, per_round: int) -> str:
    config = {
        "num-server-rounds": args.rounds,
        "run-name": "scale",
        "output-dir": str(out_dir),
        "model.cache-dir": str(cache_dir),
        "model.pretrain-steps": args.pretrain_steps,
        "data.max-train-per-client": args.max_train,
        "data.max-test-per-client": args.max_test,
        "train.local-epochs": 1,
        "train.batch-size": args.batch_size,
        "clients-per-round": per_round,
        "min-clients": 2,
    }
    return " ".join(f"{key}={toml_value(value)}" for key, value in config.items())


class TreeMemory(threading.Thread):
    """Samples the summed PSS of every process whose command line mentions ``marker`` and of all
    their descendants; ``peak`` holds the largest sum seen (bytes) and ``processes`` its count."""

    def __init__(self, marker: str, every: float) -> None:
        super().__init__(daemon=True)
        self.marker, self.every = marker, every
        self.peak, self.processes = 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            tree: dict[int, psutil.Process] = {}
            for pid in processes_mentioning(self.marker):
                try:
                    root = psutil.Process(pid)
                    tree[pid] = root
                    tree.update({child.pid: child for child in root.children(recursive=True)})
                except psutil.Error:
                    continue
            total = 0
            for process in tree.values():
                try:
                    total += process.memory_full_info().pss
                except psutil.Error:
                    continue
            if total > self.peak:
                self.peak, self.processes = total, len(tree)


def simulate(args: argparse.Namespace, work: Path, cache_dir: Path, clients: int, per_round: int) -> dict:
    """One `flwr run` on the local simulation with ``clients`` SuperNodes; its figures."""
    home = work / "flwr-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {clients}\n"
        f"options.backend.client-resources.num-cpus = {args.sim_cpus}\n"
        "options.backend.client-resources.num-gpus = 0\n"
    )
    env = {**flower_env(home), "F3OCUS_CACHE": str(work / "f3ocus-cache")}
    out = work / "outputs"
    memory = TreeMemory(str(home), args.sample_every)
    memory.start()
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(ROOT),
                "--stream",
                "--run-config",
                run_config(args, out, cache_dir, per_round),
            ],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        wall = time.perf_counter() - started
    finally:
        memory.done.set()
        memory.join()
        stop(processes_mentioning(str(home)))
    (work / "flwr-run.log").write_text(result.stdout + result.stderr)
    metrics = out / "scale" / "metrics.jsonl"
    if result.returncode != 0 or not metrics.exists():
        raise RuntimeError(f"{clients} clients failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    later = [row["seconds_round"] for row in rows if row["round"] >= 1]
    return {
        "clients": clients,
        "per_round": per_round or clients,
        "round0": rows[0]["seconds_round"],
        "round": sum(later) / len(later),
        "wall": wall,
        "peak_gib": memory.peak / 2**30,
        "processes": memory.processes,
        "accuracy": rows[-1]["accuracy"],
        "evaluated": len(rows[-1]["accuracy_per_client"]),
    }


def prebuild(args: argparse.Namespace, cache_dir: Path) -> None:
    """The base checkpoint, built once into ``cache_dir`` (every run then loads it)."""
    from f3ocus_core.pretrain import ensure_base_checkpoint

    ensure_base_checkpoint(cache_dir, steps=args.pretrain_steps, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="4,16,64", help="comma-separated client counts")
    parser.add_argument(
        "--clients-per-round",
        type=int,
        default=0,
        help="also run each count with this sample per round (0: no extra runs)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sim-cpus", type=int, default=1, help="client-resources.num-cpus per client")
    parser.add_argument("--max-train", type=int, default=32, help="data.max-train-per-client")
    parser.add_argument("--max-test", type=int, default=16, help="data.max-test-per-client")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pretrain-steps", type=int, default=30)
    parser.add_argument("--sample-every", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("--timeout", type=int, default=7200)
    args = parser.parse_args()

    runs = [(n, 0) for n in map(int, args.clients.split(","))]
    if args.clients_per_round:
        runs += [(n, args.clients_per_round) for n, _ in runs if n > args.clients_per_round]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        cache_dir = Path(tmp) / "model-cache"
        prebuild(args, cache_dir)
        print(
            f"{args.rounds} rounds, caps {args.max_train}/{args.max_test} per client, "
            f"{args.sim_cpus} CPU per client (Ray)"
        )
        print(
            "| clients | trained per round | round 1..R mean s | round 0 s | flwr run s | peak GiB (PSS) "
            "| processes | final accuracy |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for clients, per_round in runs:
            r = simulate(args, Path(tmp) / f"n{clients}-k{per_round}", cache_dir, clients, per_round)
            print(
                f"| {r['clients']} | {r['per_round']} | {r['round']:.1f} | {r['round0']:.1f} | {r['wall']:.0f} "
                f"| {r['peak_gib']:.2f} | {r['processes']} | {r['accuracy']:.4f} ({r['evaluated']} evaluated) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
