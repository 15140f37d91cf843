"""Bytes and time of a round with ``secagg=true`` against the same round in the clear.

Two in-process runs of the default model (tiny ViLT, LoRA rank 8 on query/value/dense, easy-vqa,
budget 2 of 4 layers, ``--clients`` clients, ``--train`` examples each, ``--rounds`` rounds), both with
``dp.clip-norm`` (equal weights, no noise) and ``aggregation.lora="separate"``, one with ``secagg``.
Every message to and from a client is measured as Flower serialises its content
(``recorddict_to_proto(...).ByteSize()``: arrays, config, metrics, keys and shares), per client and
round, split into the train phase (train and, secured, share-keys, masked-input and unmask) and the
evaluate exchange. Times per round: the round's wall time and its train phase (``seconds_round``,
``seconds_train`` of ``metrics.jsonl``), and within the train phase the clients' time in their
handlers, summed over clients (in process they run one after the other): training, and the
secure-aggregation stages; the rest of the train phase is the server's.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_secagg_round.py`` (about a minute).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.common.serde import recorddict_to_proto  # noqa: E402

from f3ocus_evidence.inprocess import client_handlers, run_server_app  # noqa: E402
from f3ocus_flower.protocol import CONFIG, SECAGG_STAGE, SERVER_ROUND  # noqa: E402


def measure(secagg: bool, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """One run; per client and round (rounds 1..R): bytes up and down per phase, exchanges, and the
    times (means over rounds)."""
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    name = "secagg" if secagg else "clear"
    config.update(
        {
            "num-server-rounds": args.rounds,
            "run-name": name,
            "output-dir": str(out / "outputs"),
            "model.cache-dir": str(out / "cache"),
            "model.pretrain-steps": 100,
            "data.max-train-per-client": args.train,
            "data.max-test-per-client": 32,
            "min-clients": args.clients,
            "dp.clip-norm": 1.0,
            "aggregation.lora": "separate",
            "aggregation.max-update-norm": 0.0,
            "secagg": secagg,
        }
    )
    traffic: dict[tuple[str, str], int] = defaultdict(int)
    exchanges: dict[str, int] = defaultdict(int)
    client_seconds: dict[tuple[int, bool], float] = defaultdict(float)

    def spy(handler):
        def wrapped(msg, context):
            started = time.perf_counter()
            reply = handler(msg, context)
            server_round = int(msg.content.config_records[CONFIG][SERVER_ROUND])
            if server_round == 0:
                return reply
            phase = "evaluate" if msg.metadata.message_type == "evaluate" else "train"
            if phase == "train":
                stage = SECAGG_STAGE in msg.content.config_records[CONFIG]
                client_seconds[(server_round, stage)] += time.perf_counter() - started
            traffic[(phase, "down")] += recorddict_to_proto(msg.content).ByteSize()
            traffic[(phase, "up")] += recorddict_to_proto(reply.content).ByteSize()
            exchanges[str(msg.content.config_records[CONFIG].get(SECAGG_STAGE, msg.metadata.message_type))] += 1
            return reply

        return wrapped

    handlers = client_handlers()
    handlers.update({kind: spy(handlers[kind]) for kind in ("train", "evaluate")})
    _, rows = run_server_app(config, num_nodes=args.clients, handlers=handlers)
    rounds = [row for row in rows if row["round"] > 0]
    per = args.clients * len(rounds)
    result = {f"{phase} {direction}": value / per for (phase, direction), value in traffic.items()}
    result["exchanges"] = len(exchanges)
    result["round s"] = float(np.mean([row["seconds_round"] for row in rounds]))
    result["train s"] = float(np.mean([row["seconds_train"] for row in rounds]))
    result["clients' training s"] = float(np.mean([client_seconds[(row["round"], False)] for row in rounds]))
    result["clients' secagg stages s"] = float(np.mean([client_seconds[(row["round"], True)] for row in rounds]))
    result["server's train phase s"] = (
        result["train s"] - result["clients' training s"] - result["clients' secagg stages s"]
    )
    result["accuracy"] = rounds[-1]["accuracy"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--train", type=int, default=128, help="training examples per client")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        clear = measure(False, args, Path(folder))
        secure = measure(True, args, Path(folder))
    print(
        f"{args.clients} clients, {args.train} training examples each, {args.rounds} rounds; per client and "
        "round (mean over rounds 1..R)"
    )
    print("| | clear | secagg | secagg / clear |")
    print("|---|---|---|---|")
    for key, unit in (("train up", "kB"), ("train down", "kB"), ("evaluate up", "kB"), ("evaluate down", "kB")):
        print(
            f"| bytes {key} per client | {clear[key] / 1e3:.1f} {unit} | {secure[key] / 1e3:.1f} {unit} | "
            f"{secure[key] / clear[key]:.2f} |"
        )
    print(f"| exchanges per round | {clear['exchanges']} | {secure['exchanges']} | |")
    for key in ("round s", "train s", "clients' training s", "clients' secagg stages s", "server's train phase s"):
        ratio = f"{secure[key] / clear[key]:.2f}" if clear[key] > 0 else "-"
        print(f"| {key} per round (all clients) | {clear[key]:.3f} | {secure[key]:.3f} | {ratio} |")
    print(f"final accuracy: clear {clear['accuracy']:.4f}, secagg {secure['accuracy']:.4f}")


if __name__ == "__main__":
    main()
