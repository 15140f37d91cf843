"""What one attacking client achieves against the server's defences, and what the defences cost.

Real short runs of the project's ServerApp and ClientApp (:func:`f3ocus_evidence.inprocess.run_server_app`,
no SuperLink): the default run config and tiny ViLT base, 4 clients, a few rounds, smaller data.
The last client (partition 3) attacks in every round from round 1 on:

- ``inflate``: reports ``num-examples`` 10^9 in every reply (the same in its scores and ``train``)
  and an accuracy of 1.0; its update itself is honest;
- ``scale``: sends ``sent + 100 (u - sent)``, its honest change ``u - sent`` scaled by 100;
- ``flip``: sends ``sent - 10 (u - sent)``, its change sign-flipped and scaled by 10.

Defences (run-config keys, docs/config.md): ``none`` (``aggregation.max-update-norm=0``,
``aggregation.max-client-share=1``), ``norm`` (only the update-norm bound), ``share`` (only the share
cap), ``median`` / ``trimmed`` (only ``aggregation.robust``), ``default`` (the shipped defaults, or
those given with ``--set``).

Printed per (attack, defence): the federated metric of the last round as recorded (what the
attacker does to the metrics), the mean accuracy of the three honest clients on their
own test data (what it does to the model, read from ``metric_per_client``), and the worst ratio
``||u - sent|| / ||sent||`` of an honest client's update per layer (what a norm bound must allow).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_robustness.py [--rounds 3] [--attacks ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from f3ocus_flower.protocol import ARRAYS, CONFIG, LAYERS, METRICS, NUM_EXAMPLES, SCORES

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("honest", "inflate", "scale", "flip")
DEFENCES = {
    "none": {"aggregation.max-update-norm": 0.0, "aggregation.max-client-share": 1.0},
    "norm": {"aggregation.max-client-share": 1.0},
    "share": {"aggregation.max-update-norm": 0.0},
    "median": {"aggregation.max-update-norm": 0.0, "aggregation.max-client-share": 1.0, "aggregation.robust": "median"},
    "trimmed": {
        "aggregation.max-update-norm": 0.0,
        "aggregation.max-client-share": 1.0,
        "aggregation.robust": "trimmed-mean",
    },
    "default": {},
}


def _records(reply: Message, **changes) -> RecordDict:
    content = dict(reply.content.items())
    content.update(changes)
    return RecordDict(content)


def attacker(kind: str, node: int, layers_of: dict, ratios: list[float], examples: dict) -> dict:
    """A decorator per message type of the ClientApp's handlers: ``node`` attacks as ``kind``; every
    honest train reply's per-layer change ratio goes into ``ratios``, each node's honest
    ``num-examples`` into ``examples``."""

    def wrap(phase: str):
        def decorate(handler):
            def wrapped(msg: Message, context) -> Message:
                reply = handler(msg, context)
                if reply.has_error():
                    return reply
                server_round = int(msg.content.config_records[CONFIG]["server-round"])
                # From round 1 on; the scores for round 1 come with round 0's evaluate reply.
                attacking = (
                    msg.metadata.dst_node_id == node
                    and kind != "honest"
                    and (server_round >= 1 or SCORES in reply.content)
                )
                if phase == MessageType.TRAIN:
                    examples[msg.metadata.dst_node_id] = int(reply.content[METRICS][NUM_EXAMPLES])
                    sent = {k: a.numpy() for k, a in msg.content[ARRAYS].items()}
                    got = {k: a.numpy() for k, a in reply.content[ARRAYS].items()}
                    if not attacking:
                        for layer in msg.content[CONFIG][LAYERS]:
                            keys = layers_of[layer]
                            base = np.sqrt(sum(np.sum(sent[k].astype(np.float64) ** 2) for k in keys))
                            change = np.sqrt(sum(np.sum((got[k].astype(np.float64) - sent[k]) ** 2) for k in keys))
                            if base > 0:
                                ratios.append(float(change / base))
                if not attacking:
                    return reply
                if kind == "inflate":
                    changed = {}
                    for record in (SCORES, METRICS):
                        if record in reply.content and (record == SCORES or server_round >= 1):
                            values = dict(reply.content[record])
                            values[NUM_EXAMPLES] = 10**9
                            if record == METRICS and phase == MessageType.EVALUATE:
                                values.update({"accuracy": 1.0, "metric": 1.0})
                            changed[record] = MetricRecord(values)
                    return Message(_records(reply, **changed), reply_to=msg)
                if phase == MessageType.TRAIN and kind in ("scale", "flip"):
                    factor = 100.0 if kind == "scale" else -10.0
                    poisoned = {k: Array((sent[k] + factor * (got[k] - sent[k])).astype(sent[k].dtype)) for k in got}
                    return Message(_records(reply, **{ARRAYS: ArrayRecord(poisoned)}), reply_to=msg)
                return reply

            return wrapped

        return decorate

    return {phase: wrap(phase) for phase in (MessageType.TRAIN, MessageType.EVALUATE)}


def run_one(config: dict, attack: str, defence: str, clients: int, folder: Path, layers_of: dict) -> dict:
    from f3ocus_evidence.inprocess import client_handlers, run_server_app

    config = {**config, **DEFENCES[defence], "run-name": f"{attack}-{defence}", "output-dir": str(folder)}
    ratios: list[float] = []
    examples: dict[int, int] = {}
    started = time.perf_counter()
    attack_of = attacker(attack, clients, layers_of, ratios, examples)
    handlers = {
        kind: attack_of[kind](handler) if kind in attack_of else handler for kind, handler in client_handlers().items()
    }
    _, rows = run_server_app(config, clients, handlers=handlers, state_dir=str(folder / f"state-{attack}-{defence}"))
    last = rows[-1]
    attacker_name = f"{config['task']}/{clients - 1}"
    honest = {name: value for name, value in last["metric_per_client"].items() if name != attacker_name}
    return {
        "attack": attack,
        "defence": defence,
        "metric": last["metric"],
        "honest": float(np.mean(list(honest.values()))),
        "max_ratio": max(ratios) if ratios else None,
        "p90_ratio": float(np.percentile(ratios, 90)) if ratios else None,
        "examples": [examples[node] for node in sorted(examples)],
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--train", type=int, default=200, help="data.max-train-per-client")
    parser.add_argument("--test", type=int, default=100, help="data.max-test-per-client")
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--defences", nargs="*", default=list(DEFENCES), choices=list(DEFENCES))
    parser.add_argument("--cache-dir", default="", help="model.cache-dir (the base checkpoint is built once)")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="run-config overrides (TOML values) before each defence's own, e.g. "
        "aggregation.max-update-norm=2.0 (then the bound of 'norm' and 'default')",
    )
    args = parser.parse_args()

    from f3ocus_core.config import parse_run_config
    from f3ocus_flower.model_setup import model_path, set_up_model

    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update(
        {
            "num-server-rounds": args.rounds,
            "min-clients": args.clients,
            "model.cache-dir": args.cache_dir,
            "data.max-train-per-client": args.train,
            "data.max-test-per-client": args.test,
        }
    )
    for item in args.set:
        key, _, value = item.partition("=")
        config[key] = tomllib.loads(f"v = {value}")["v"]
    settings = parse_run_config(config)
    setup = set_up_model(model_path(settings), settings.peft, settings.seed)
    layers_of = {index: list(keys) for index, keys in enumerate(setup.units.names)}

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-robustness-") as folder:
        for attack in args.attacks:
            for defence in args.defences:
                result = run_one(config, attack, defence, args.clients, Path(folder), layers_of)
                results.append(result)
                print(json.dumps(result), flush=True)
    print(
        f"\n{args.clients} clients, {args.rounds} rounds, at most {args.train} train / {args.test} test examples "
        f"per client (train examples {results[0]['examples']}); client {args.clients - 1} attacks from round 1. "
        f"Round {args.rounds}:"
    )
    print("| attack | defence | federated metric (recorded) | honest clients' accuracy | max honest update ratio |")
    print("|---|---|---|---|---|")
    for r in results:
        ratio = "-" if r["max_ratio"] is None else f"{r['max_ratio']:.3f}"
        print(f"| {r['attack']} | {r['defence']} | {r['metric']:.4f} | {r['honest']:.4f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
