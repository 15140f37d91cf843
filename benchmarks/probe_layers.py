"""Local layer probes: which layers does each client need? Every client of a setting trains alone, on
its own data, with a fixed set of shared layers (heads only, each pair of layers or each single
layer, all layers), for several seeds, and is tested on its own test part.

This is the ground truth a layer selector is meant to find (issue 18): if every client's best pair is
the same, balancing layers across clients can only cost; where clients' best pairs differ, it can
pay. Each cell runs the ClientApp's own steps (``f3ocus_flower.model_setup.set_up_model``,
``set_answer_head``, ``set_trainable`` on the chosen layers plus the personal head,
``f3ocus_core.training.train`` and ``evaluate``) from the same base the run would load, with no
federation. Layers are numbered as in the run (docs/models.md: tower by tower, ``vision.0`` ...
``language.0`` ... for two-tower families), and the table names them so.

    PYTHONPATH=. python benchmarks/probe_layers.py     # tiny ViLT, 4 IID clients, 3 seeds: ~4 min, 1 core
    # the shifted setting of docs/data.md: clients 1, 3 see inverted / grey images, 2, 3 ask negated
    # questions the base never learned
    PYTHONPATH=. python benchmarks/probe_layers.py --pretrain-exclude negation \\
        --shift none,invert,none,grey --questions all-negation,all-negation,all,all
    PYTHONPATH=. python benchmarks/probe_layers.py --model builtin:tiny-llava-easyvqa   # two towers

Prints one table of mean test accuracy (± sample std over seeds) per client x layer set, the best
pair of each client marked ``*``, then per client its best pair, the gaps best - worst pair (both
chosen by their mean) and all layers - heads only, each as a mean and on its lowest seed (the
check of issue 18: a gap that holds on every seed). ``--json`` also writes every cell.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from f3ocus_core.config import parse_pretrain_exclude
from f3ocus_core.data.tasks import DataSettings, load_client_data
from f3ocus_core.models import set_answer_head
from f3ocus_core.peft_units import PeftSettings, set_trainable
from f3ocus_core.pretrain import BUILTIN_MODEL, default_cache_dir, resolve_model_path
from f3ocus_core.training import TrainSettings, evaluate, make_collate, train
from f3ocus_flower.model_setup import set_up_model

HEADS_ONLY = "heads-only"
ALL_LAYERS = "all-layers"


def layer_sets(num_layers: int, kind: str) -> list[tuple[str, list[int]]]:
    """(label, layer ids) of every set to probe: heads only, each pair or single layer, all layers.

    ``kind`` is ``pairs``, ``singles`` or ``auto`` (pairs up to 8 layers, 28 pairs; singles above).
    """
    if kind == "auto":
        kind = "pairs" if num_layers <= 8 else "singles"
    if kind not in ("pairs", "singles"):
        raise ValueError(f"--sets: choose pairs, singles or auto, got {kind!r}.")
    size = 2 if kind == "pairs" else 1
    fixed = [list(c) for c in itertools.combinations(range(num_layers), size)]
    return [(HEADS_ONLY, []), *[("+".join(map(str, c)), c) for c in fixed], (ALL_LAYERS, list(range(num_layers)))]


def probe(args: argparse.Namespace) -> dict:
    """Train and test every (client, layer set, seed); return the settings, layer names and cells."""
    torch.set_num_threads(args.threads)
    exclude = parse_pretrain_exclude(args.pretrain_exclude)
    path = resolve_model_path(
        args.model, args.cache_dir or default_cache_dir(), args.pretrain_steps, args.base_seed, exclude
    )
    setup = set_up_model(path, PeftSettings(method=args.peft), args.base_seed)
    names = list(setup.layer_map.names)
    sets = layer_sets(len(names), args.sets)
    seeds = [int(s) for s in args.seeds.split(",")]
    data_settings = DataSettings(
        partitioning=args.partitioning,
        alpha=args.alpha,
        seed=args.data_seed,
        max_train=args.max_train,
        max_test=args.max_test,
        shift=args.shift,
        questions=args.questions,
    )
    train_settings = TrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    cells = []
    started = time.perf_counter()
    partitions = [int(p) for p in args.partitions.split(",")] if args.partitions else range(args.clients)
    for client in partitions:
        data = load_client_data(data_settings, client, args.clients)
        collate = make_collate(setup.processor, data.labels, multi_label=data.kind == "multilabel")
        # Rows decoded once (the images as PIL), not once per training: the same rows in the same order.
        train_rows, test_rows = list(data.train), list(data.test)
        for (label, layers), seed in itertools.product(sets, seeds):
            model = copy.deepcopy(setup.model)
            set_answer_head(model, data.labels, seed)
            trainable = set_trainable(model, setup.units, layers, head=True)
            if trainable:  # a generative family has no head: heads-only then trains nothing
                train(model, train_rows, collate, train_settings, seed=seed)
            metrics = evaluate(model, test_rows, collate, data.kind, args.eval_batch_size)
            cells.append(
                {"client": data.name, "set": label, "layers": layers, "seed": seed, "metric": float(metrics["metric"])}
            )
        print(
            f"  {data.name}: {len(sets) * len(seeds)} trainings done, {time.perf_counter() - started:.0f} s", flush=True
        )
    return {
        "model": args.model,
        "path": path,
        "layer_names": names,
        "sets": [label for label, _ in sets],
        "seeds": seeds,
        "settings": vars(args),
        "cells": cells,
        "seconds": time.perf_counter() - started,
    }


def summarise(result: dict) -> dict[str, dict]:
    """Per client: per layer set (mean, std over seeds), its best and worst fixed set, and the gaps."""
    summary: dict[str, dict] = {}
    for client in dict.fromkeys(cell["client"] for cell in result["cells"]):
        by_set = {}
        for label in result["sets"]:
            values = [c["metric"] for c in result["cells"] if c["client"] == client and c["set"] == label]
            by_set[label] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        fixed = [label for label in result["sets"] if label not in (HEADS_ONLY, ALL_LAYERS)]
        best = max(fixed, key=lambda label: by_set[label][0])
        worst = min(fixed, key=lambda label: by_set[label][0])
        per_seed = {(c["set"], c["seed"]): c["metric"] for c in result["cells"] if c["client"] == client}
        seeds = sorted({seed for _, seed in per_seed})
        summary[client] = {
            "by_set": by_set,
            "best": best,
            "worst": worst,
            "best_minus_worst": by_set[best][0] - by_set[worst][0],
            "all_minus_heads": by_set[ALL_LAYERS][0] - by_set[HEADS_ONLY][0],
            "best_minus_worst_per_seed": [per_seed[best, s] - per_seed[worst, s] for s in seeds],
            "all_minus_heads_per_seed": [per_seed[ALL_LAYERS, s] - per_seed[HEADS_ONLY, s] for s in seeds],
        }
    return summary


def table(result: dict) -> str:
    """The client x layer-set table (mean ± std over seeds, best fixed set of each client marked ``*``)
    and one line per client with its best set and the two gaps."""
    summary = summarise(result)
    names = result["layer_names"]
    width = max(12, *(len(label) + 2 for label in result["sets"]))
    lines = [
        "layers: " + ", ".join(f"{i}={name}" for i, name in enumerate(names)),
        f"{'client':<14}" + "".join(f"{label:>{width}}" for label in result["sets"]),
    ]
    for client, row in summary.items():
        cells = []
        for label in result["sets"]:
            mean, std = row["by_set"][label]
            cells.append(f"{mean:.3f}±{std:.3f}{'*' if label == row['best'] else ' '}".rjust(width))
        lines.append(f"{client:<14}" + "".join(cells))
    lines.append("")
    for client, row in summary.items():
        best = "+".join(names[int(i)] for i in row["best"].split("+"))
        tie = " (all fixed sets tie)" if row["best_minus_worst"] == 0 else ""
        lines.append(
            f"{client:<14} best {row['best']} ({best}){tie}; best - worst fixed set "
            f"{row['best_minus_worst']:+.3f} (lowest seed {min(row['best_minus_worst_per_seed']):+.3f}); "
            f"all layers - heads only {row['all_minus_heads']:+.3f} "
            f"(lowest seed {min(row['all_minus_heads_per_seed']):+.3f})"
        )
    clear = {client: row["best"] for client, row in summary.items() if min(row["best_minus_worst_per_seed"]) > 0}
    lines.append(
        f"clients whose best fixed set beats their worst on every seed: {len(clear)} of {len(summary)} "
        f"{clear}; their best sets differ: {'yes' if len(set(clear.values())) > 1 else 'no'}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=BUILTIN_MODEL, help="model.name (a built-in base is built once, cached)")
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=3000,
        help="model.pretrain-steps (default: the shipped 3000, the base every run loads)",
    )
    parser.add_argument("--pretrain-exclude", default="", help="model.pretrain-exclude, e.g. negation")
    parser.add_argument("--cache-dir", default="", help="model.cache-dir (default $F3OCUS_CACHE or ~/.cache/f3ocus)")
    parser.add_argument("--base-seed", type=int, default=0, help="seed of the base checkpoint (as f3ocus-compare)")
    parser.add_argument("--peft", default="lora", help="peft.method")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--partitions", default="", help="probe only these partition ids, e.g. 2,3 (default: all)")
    parser.add_argument("--partitioning", default="iid", help="data.partitioning")
    parser.add_argument("--alpha", type=float, default=0.5, help="data.alpha")
    parser.add_argument("--data-seed", type=int, default=0, help="the run's seed for the data split")
    parser.add_argument("--shift", default="none", help="data.shift, one or one per client")
    parser.add_argument("--questions", default="all", help="data.questions, one or one per client")
    parser.add_argument("--max-train", type=int, default=192, help="data.max-train-per-client")
    parser.add_argument("--max-test", type=int, default=128, help="data.max-test-per-client")
    parser.add_argument("--sets", default="auto", help="pairs, singles or auto (pairs up to 8 layers)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=2, help="train.local-epochs")
    parser.add_argument("--lr", type=float, default=5e-3, help="train.lr")
    parser.add_argument("--batch-size", type=int, default=32, help="train.batch-size")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="", help="also write every cell to this file")
    parser.add_argument("--table-of", default="", help="print the table of a --json file written before; run nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the probes, print the table, optionally write the cells as JSON; return the result."""
    args = parse_args(argv)
    if args.table_of:
        result = json.loads(Path(args.table_of).read_text())
        print(table(result))
        return result
    result = probe(args)
    print(table(result))
    print(f"{len(result['cells'])} trainings in {result['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "summary": summarise(result)}, indent=1))
    return result


if __name__ == "__main__":
    main()
