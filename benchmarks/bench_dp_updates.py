"""What central DP on partial updates does to a real round's layer averages, at epsilon 8, 4 and 1.

One in-process round of the default run (tiny ViLT, LoRA, easy-vqa, 4 clients, budget 2, DP off)
captures every client's real update (the change of its assigned units). Then, for each target
epsilon over ``--rounds`` rounds with every client each round (delta 1e-5), ``sigma`` is the
smallest noise multiplier that fits (:func:`f3ocus_core.privacy.noise_multiplier_for`), ``C`` the
median of the clients' update norms (so about half are clipped), and each layer's DP average (mean
of clipped changes plus ``N(0, (sigma C / n_l)^2)``) is compared with the plain mean of the
unclipped changes over ``--draws`` noise draws:

* relative error ``||dp - plain|| / ||plain||`` and cosine similarity, mean over layers and draws;
* the clipping's own share: the same for the noise-free mean of clipped changes.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_dp_updates.py`` (about 20 s on one core).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3ocus_core.privacy import clip_update, noise_multiplier_for, update_norm  # noqa: E402
from f3ocus_evidence.inprocess import client_handlers, run_server_app  # noqa: E402
from f3ocus_flower.protocol import ARRAYS, CONFIG, LAYERS, record_to_state  # noqa: E402


def capture(clients: int, train: int, out: Path) -> tuple[list[tuple[list[int], dict, dict]], list[list[str]]]:
    """One round of the default run: every client's (layers, units sent, units returned), and the
    unit keys of each layer."""
    config = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    config.update(
        {
            "num-server-rounds": 1,
            "run-name": "dp-bench",
            "output-dir": str(out / "outputs"),
            "model.cache-dir": str(out / "cache"),
            "model.pretrain-steps": 100,
            "data.max-train-per-client": train,
            "data.max-test-per-client": 16,
            "min-clients": clients,
        }
    )
    seen = []

    def spy(handler):
        def wrapped(msg, context):
            reply = handler(msg, context)
            seen.append(
                (
                    [int(v) for v in msg.content.config_records[CONFIG][LAYERS]],
                    record_to_state(msg.content.array_records[ARRAYS]),
                    record_to_state(reply.content.array_records[ARRAYS]),
                )
            )
            return reply

        return wrapped

    handlers = client_handlers()
    handlers["train"] = spy(handlers["train"])
    run_server_app(config, num_nodes=clients, handlers=handlers)
    units = json.loads((out / "outputs" / "dp-bench" / "config.json").read_text())["units"]
    return seen, units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--train", type=int, default=128, help="training examples per client")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        replies, units = capture(args.clients, args.train, Path(folder))
    norms = [update_norm(new, sent) for _, sent, new in replies]
    clip = float(np.median(norms))
    clipped = [clip_update(new, sent, clip)[0] for _, sent, new in replies]
    layers = sorted({layer for chosen, _, _ in replies for layer in chosen})
    rng = np.random.default_rng(0)

    def compare(noise: float) -> tuple[float, float]:
        errors, cosines = [], []
        for layer in layers:
            keys = units[layer]
            trainers = [index for index, (chosen, _, _) in enumerate(replies) if layer in chosen]

            def change(index: int, state: dict, keys: list[str] = keys) -> np.ndarray:
                sent = replies[index][1]
                return np.concatenate([(state[key].astype(np.float64) - sent[key]).ravel() for key in keys])

            plain = np.mean([change(i, replies[i][2]) for i in trainers], axis=0)
            mean_clipped = np.mean([change(i, clipped[i]) for i in trainers], axis=0)
            for _ in range(args.draws if noise > 0 else 1):
                dp = mean_clipped + rng.normal(0.0, noise * clip / len(trainers), mean_clipped.shape)
                errors.append(np.linalg.norm(dp - plain) / np.linalg.norm(plain))
                cosines.append(float(dp @ plain / (np.linalg.norm(dp) * np.linalg.norm(plain))))
        return float(np.mean(errors)), float(np.mean(cosines))

    counts = [sum(layer in chosen for chosen, _, _ in replies) for layer in layers]
    sizes = [
        sum(replies[0][1][key].size for key in units[layer])
        if all(key in replies[0][1] for key in units[layer])
        else None
        for layer in layers
    ]
    print(
        f"{len(replies)} real client updates (tiny ViLT, LoRA r8, budget 2, {args.train} examples each); "
        f"update norms {', '.join(f'{n:.3g}' for n in sorted(norms))}; C = median = {clip:.3g}"
    )
    print(
        f"layers trained {layers} by {counts} clients; parameters of a layer: "
        f"{next(size for size in sizes if size)}; epsilon over {args.rounds} rounds, every client each round, "
        "delta 1e-5"
    )
    print("| target epsilon | sigma | relative error of the layer average | cosine to the plain average |")
    print("|---|---|---|---|")
    error, cosine = compare(0.0)
    print(f"| clipping only | 0 | {error:.3f} | {cosine:.3f} |")
    for target in (8.0, 4.0, 1.0):
        sigma = noise_multiplier_for(target, args.rounds, args.clients, args.clients, 1e-5)
        error, cosine = compare(sigma)
        print(f"| {target:g} | {sigma:.3f} | {error:.3g} | {cosine:.4f} |")


if __name__ == "__main__":
    main()
