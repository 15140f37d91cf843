"""How far each LoRA aggregation scheme is from the exact mean of the clients' products.

With k clients on a LoRA module, the exact average of their weight changes is
``M = sum_k n_k B_k A_k / sum_k n_k``. ``separate`` uses ``mean(B) mean(A)``; ``product`` uses the
rank-r truncated SVD of ``M``. Both errors are relative Frobenius errors against ``M``
(``err/M``); because part of ``M`` is the product ``B0 A0`` every client started the round from,
which both schemes keep, the errors are also given against the round's change ``M - B0 A0``
(``err/dM``), the part that aggregation can get wrong.

1. Random factors (the worst case: clients with unrelated A and B), 768 x 768, r = 8.
2. Real LoRA updates: the built-in tiny ViLT base checkpoint, easy-vqa split among k clients
   (Dirichlet 0.5, 800 train examples each, the run's defaults), every client trains every layer
   from the same global A, B with the default recipe (``train.*``), for ``--rounds`` rounds; each
   scheme follows its own trajectory. Per round: median and max over the LoRA modules of both
   errors, ``|A'|/|mean A|`` (the scale the product scheme's even split gives A), and the clients'
   mean local train loss of the round (the effect on training).

The last line is ``worst relative error, real updates: product <x>, separate <y>`` (max over
modules, rounds and k, against ``M``).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_aggregation.py`` (a few minutes on one core;
``--quick`` for k = 2 and 2 rounds of 10 steps).
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import numpy as np
import torch

from f3ocus_core.aggregation import PartialUpdate, aggregate_layers, lora_pairs, lora_product_mean
from f3ocus_core.data.tasks import DataSettings, load_client_data
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import load_vqa_model, set_answer_head
from f3ocus_core.peft_units import PeftSettings, attach_units, get_state, set_state, set_trainable, unit_map
from f3ocus_core.pretrain import ensure_base_checkpoint
from f3ocus_core.training import TrainSettings, make_collate, train


def errors(factors: list[tuple[np.ndarray, np.ndarray]], weights: list[float], start: np.ndarray) -> dict[str, float]:
    """Relative errors of both schemes against the exact mean of products, for one module."""
    w = np.asarray(weights, float) / sum(weights)
    exact = sum(wk * b.astype(np.float64) @ a.astype(np.float64) for (b, a), wk in zip(factors, w))
    separate = sum(wk * b.astype(np.float64) for (b, _), wk in zip(factors, w)) @ sum(
        wk * a.astype(np.float64) for (_, a), wk in zip(factors, w)
    )
    b_new, a_new, _ = lora_product_mean(factors, weights)
    product = b_new @ a_new
    mean_a = sum(wk * a.astype(np.float64) for (_, a), wk in zip(factors, w))
    norm, change = np.linalg.norm(exact), np.linalg.norm(exact - start)
    return {
        "product/M": np.linalg.norm(product - exact) / norm,
        "separate/M": np.linalg.norm(separate - exact) / norm,
        "product/dM": np.linalg.norm(product - exact) / change,
        "separate/dM": np.linalg.norm(separate - exact) / change,
        "|A'|/|mean A|": np.linalg.norm(a_new) / np.linalg.norm(mean_a),
    }


def random_case(k: int, size: int, rank: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    factors = [(rng.standard_normal((size, rank)), rng.standard_normal((rank, size))) for _ in range(k)]
    weights = list(rng.integers(50, 800, k).astype(float))
    return errors(factors, weights, np.zeros((size, size)))


def real_updates(k: int, rounds: int, max_steps: int, scheme: str, base: str) -> list[dict[str, float]]:
    """Per round: error figures over the LoRA modules and the mean train loss, following ``scheme``."""
    model, processor = load_vqa_model(base)
    layer_map = layer_map_for(model)
    torch.manual_seed(0)
    model = attach_units(model, layer_map, PeftSettings())
    units = unit_map(model, layer_map, "lora")
    keys = units.all_keys()
    global_state = get_state(model, keys)
    data_settings = DataSettings(task="easy-vqa", partitioning="dirichlet", alpha=0.5, max_train=800, max_test=200)
    clients = [load_client_data(data_settings, i, k) for i in range(k)]
    settings = TrainSettings(max_steps=max_steps)
    rows = []
    for round_ in range(rounds):
        updates, losses = [], []
        for i, data in enumerate(clients):
            local = copy.deepcopy(model)
            set_answer_head(local.get_base_model(), data.labels, 0)
            set_state(local, global_state)
            set_trainable(local, units, list(range(len(units.names))))
            result = train(local, data.train, make_collate(processor, data.labels), settings, seed=round_ * 100 + i)
            updates.append(PartialUpdate(str(i), get_state(local, keys), len(data.train)))
            losses.append(result["loss"])
        figures = [
            errors(
                [(u.state[b_key], u.state[a_key]) for u in updates],
                [u.num_examples for u in updates],
                global_state[b_key].astype(np.float64) @ global_state[a_key].astype(np.float64),
            )
            for a_key, b_key in lora_pairs(keys).items()
        ]
        row = {"round": round_ + 1, "loss": float(np.mean(losses))}
        for name in figures[0]:
            values = np.array([f[name] for f in figures])
            row[name] = (float(np.median(values)), float(values.max()))
        rows.append(row)
        global_state = aggregate_layers(global_state, updates, lora=scheme)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clients, rounds, steps = ([2], 2, 10) if args.quick else ([2, 4], 3, 0)

    print("1. random factors, 768 x 768, r = 8 (unrelated clients): relative error against M")
    for k in (2, 4, 8):
        cases = [random_case(k, 768, 8, seed) for seed in range(3)]
        print(
            f"   k={k}: product {max(c['product/M'] for c in cases):.3f}, "
            f"separate {max(c['separate/M'] for c in cases):.3f}"
        )

    print(
        "2. real LoRA updates (tiny ViLT base, easy-vqa Dirichlet 0.5, default recipe"
        f"{'' if not steps else f', {steps} steps'}); median / max over modules"
    )
    worst = {"product": 0.0, "separate": 0.0}
    with tempfile.TemporaryDirectory() as cache:
        base = str(ensure_base_checkpoint(cache, steps=args.pretrain_steps, seed=0))
        for k in clients:
            for scheme in ("product", "separate"):
                for row in real_updates(k, rounds, steps, scheme, base):
                    cells = "  ".join(
                        f"{name} {med:.4f}/{top:.4f}"
                        for name, (med, top) in ((n, v) for n, v in row.items() if isinstance(v, tuple))
                    )
                    print(f"   k={k} following {scheme:8s} round {row['round']}: loss {row['loss']:.3f}  {cells}")
                    worst["product"] = max(worst["product"], row["product/M"][1])
                    worst["separate"] = max(worst["separate"], row["separate/M"][1])
    print(f"worst relative error, real updates: product {worst['product']:.4f}, separate {worst['separate']:.4f}")


if __name__ == "__main__":
    main()
