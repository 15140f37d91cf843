"""Cost and accuracy of LNTK layer scoring next to one local LoRA training step.

Models (all pretrained, ``--models``): ``base``, the built-in ``builtin:tiny-vilt-easyvqa`` (4 layers,
hidden 64, trained centrally for ``model.pretrain-steps`` steps on easy-vqa questions no client
holds; see ``f3ocus_core/pretrain.py``), and ``8-layer``/``12-layer``, the same config and the same
recipe with 8 and 12 layers (built here by :func:`pretrained_deep_vilt` and cached beside the base).
``--random-init`` adds the 4- and 8-layer configs untrained, for reference.

For each model, on the client's real data (easy-vqa, client 0 of 5, IID, the run's data defaults):

- time: median wall time of ``score_layers(method="lntk")`` on one scoring batch (``scoring.batch-size``
  examples) and of one local LoRA training step as the client runs it (LoRA units via
  ``f3ocus_core.peft_units`` with the run's defaults, only the units of the last ``budget`` layers and
  the answer head trainable, forward + backward + AdamW step on ``train.batch-size`` examples), in this
  one process, single-threaded, called alternately after a warm-up call each. The last layers are
  the cheapest assignment to train (the shortest backward), so the ratio is the conservative one;
- peak memory: the peak of torch's CPU tensor allocations during the call above the level at its
  start, from ``torch.profiler`` with ``profile_memory=True`` (Python objects are not counted); the
  training step is measured in steady state, so AdamW's moment buffers already exist;
- agreement with exact (reduction ``"logits"``) over ``--batches`` scoring batches (the
  ``"projection"`` seed changes with the batch): mean Spearman ρ of the normalised scores, the share
  of batches whose top-``budget`` layers equal exact's, and the mean relative error
  ``|S − S_exact| / S_exact`` beside that of the uniform vector ``1/L`` (the do-nothing reference).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_scoring.py`` (about 10 minutes on one core, most
of it building the 8- and 12-layer models once). The last line is the time ratio of the default
reduction: the largest over the models.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.profiler import ProfilerActivity, profile

from f3ocus_core.config import ModelSettings, ScoringSettings, SelectionSettings
from f3ocus_core.data.tasks import DataSettings, load_client_data
from f3ocus_core.importance import DEFAULT_PROJECTION_DIM, DEFAULT_REDUCTION, score_layers
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import load_vqa_model, logits_of, loss_of, set_answer_head, tiny_vilt
from f3ocus_core.peft_units import PeftSettings, attach_units, set_trainable, unit_map
from f3ocus_core.pretrain import BUILTIN_MODEL, default_cache_dir, resolve_model_path
from f3ocus_core.training import TrainSettings, first_batch, make_collate

#: The reductions compared: (reduction, k). ``k`` is ``projection_dim``; exact "logits" has none.
SETTINGS: tuple[tuple[str, int], ...] = (
    ("head", 1),
    ("head", 2),
    ("head", 4),
    ("projection", 1),
    ("projection", 4),
    ("logits", 0),
)


def pretrained_deep_vilt(layers: int, cache: Path, steps: int, seed: int = 0) -> Path:
    """The built-in base's recipe (``f3ocus_core.pretrain.build_base_checkpoint``) with ``layers``
    layers: trained centrally on the easy-vqa base pool, saved once under ``cache``."""
    from transformers import ViltForQuestionAnswering

    from f3ocus_core.data import easy_vqa
    from f3ocus_core.models import build_processor, tiny_vilt_config
    from f3ocus_core.training import evaluate, train

    target = cache / f"bench-vilt-{layers}layers-steps{steps}-seed{seed}"
    if (target / "config.json").exists():
        return target
    pool = easy_vqa.base_pool(seed)
    held_out = max(1, len(pool) // 10)
    fit, check = pool.select(range(len(pool) - held_out)), pool.select(range(len(pool) - held_out, len(pool)))
    processor = build_processor(pool["question"])
    labels = easy_vqa.ANSWERS
    config = tiny_vilt_config(num_labels=len(labels), vocab_size=len(processor.tokenizer), num_hidden_layers=layers)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    torch.manual_seed(seed)
    model = ViltForQuestionAnswering(config)
    collate = make_collate(processor, labels)
    settings = TrainSettings(epochs=10_000, lr=2e-3, batch_size=32, warmup=0.05, max_steps=steps)
    train(model, fit, collate, settings, seed=seed)
    accuracy = evaluate(model, check, collate, "vqa")["accuracy"]
    print(f"built {layers}-layer model: held-out accuracy {accuracy:.3f}", flush=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def paired_times(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall times of ``first`` and ``second``, called alternately ``repeats`` times each after
    one warm-up call, so that load from other processes affects both alike."""
    first()
    second()
    times_first, times_second = [], []
    for _ in range(repeats):
        for fn, times in ((first, times_first), (second, times_second)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_first), statistics.median(times_second)


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak of torch CPU allocations during ``fn`` above the level at its start (see module doc)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event.time_range.start, event.self_cpu_memory_usage) for event in prof.events() if event.self_cpu_memory_usage
    )
    level = peak = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


def lora_step_fn(model: torch.nn.Module, layers: list[int], batch: dict) -> Callable[[], None]:
    """One local LoRA step: units of ``layers`` + head trainable, forward, backward, AdamW step."""
    layer_map = layer_map_for(model)
    set_trainable(model, unit_map(model, layer_map, "lora"), layers, head=True)
    defaults = TrainSettings()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=defaults.lr, weight_decay=defaults.weight_decay
    )

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_of(logits_of(model, batch), batch).backward()
        optimizer.step()

    return step


def agreement(got: list[np.ndarray], exact: list[np.ndarray], budget: int) -> tuple[float, float, float]:
    """Mean Spearman ρ, share of equal top-``budget`` sets, mean relative error, over batches."""
    rhos, tops, errors = [], [], []
    for g, e in zip(got, exact):
        rhos.append(float(spearmanr(g, e).statistic))
        tops.append(set(np.argsort(-g)[:budget]) == set(np.argsort(-e)[:budget]))
        errors.append(float(np.mean(np.abs(g - e) / e)))
    return float(np.mean(rhos)), float(np.mean(tops)), float(np.mean(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["base", "8-layer", "12-layer"], choices=["base", "8-layer", "12-layer"]
    )
    parser.add_argument("--random-init", action="store_true", help="add untrained 4- and 8-layer rows")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--batches", type=int, default=5, help="scoring batches for the agreement")
    parser.add_argument("--cache", type=Path, default=default_cache_dir(), help="checkpoint cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = ModelSettings.pretrain_steps
    budget = SelectionSettings.budget[0]
    n_score, n_train = ScoringSettings.batch_size, TrainSettings().batch_size

    models: dict[str, Callable[[], tuple[torch.nn.Module, object]]] = {}
    for name in args.models:
        if name == "base":
            models[name] = lambda: load_vqa_model(resolve_model_path(BUILTIN_MODEL, args.cache, steps, 0))
        else:
            layers = int(name.split("-")[0])
            models[name] = lambda layers=layers: load_vqa_model(str(pretrained_deep_vilt(layers, args.cache, steps)))
    if args.random_init:
        base_processor = models["base"]()[1] if "base" in models else None
        for layers in (4, 8):
            models[f"{layers}-random"] = lambda layers=layers: (
                tiny_vilt(seed=0, num_hidden_layers=layers, vocab_size=len(base_processor.tokenizer)),
                base_processor,
            )

    header = (
        f"{'model':<9} {'reduction':<13} {'rows':>5} {'score s':>8} {'LoRA s':>7} {'time x':>7} "
        f"{'score MiB':>9} {'LoRA MiB':>8} {'mem x':>6} {'rho':>6} {f'top-{budget}':>6} "
        f"{'rel.err':>8} {'uniform':>8}"
    )
    print(
        f"scoring batch {n_score}, LoRA step batch {n_train} (last {budget} layers + head), "
        f"agreement over {args.batches} batches"
    )
    print(header)
    print("-" * len(header))
    default_ratio: dict[str, float] = {}
    data = load_client_data(DataSettings(), 0, 5)
    for name, load in models.items():
        bare, processor = load()
        set_answer_head(bare, data.labels, 0)
        layer_map = layer_map_for(bare)
        model = attach_units(bare, layer_map, PeftSettings())
        collate = make_collate(processor, data.labels)
        batches = [first_batch(data.train, collate, n_score, seed=s) for s in range(args.batches)]
        train_model = copy.deepcopy(model)
        L = len(layer_map)
        step = lora_step_fn(train_model, list(range(L - budget, L)), first_batch(data.train, collate, n_train, 0))
        train_peak = peak_allocated_bytes(step)
        exact = [score_layers(model, b, layer_map, reduction="logits").normalized for b in batches]
        uniform = float(np.mean([np.mean(np.abs(1 / L - e) / e) for e in exact]))
        kappa = len(data.labels)
        for reduction, k in SETTINGS:
            dim = max(k, 1)

            def score(
                batch: dict = batches[0], reduction: str = reduction, dim: int = dim, model=model, layer_map=layer_map
            ) -> None:
                score_layers(model, batch, layer_map, reduction=reduction, projection_dim=dim, seed=0)

            train_time, score_time = paired_times(step, score, args.repeats)
            score_peak = peak_allocated_bytes(score)
            got = [
                score_layers(model, b, layer_map, reduction=reduction, projection_dim=dim, seed=s).normalized
                for s, b in enumerate(batches)
            ]
            rho, top, error = agreement(got, exact, budget)
            label = f"logits κ={kappa}" if reduction == "logits" else f"{reduction} k={k}"
            rows = n_score * (kappa if reduction == "logits" else min(k, kappa))
            ratio = score_time / train_time
            if reduction == DEFAULT_REDUCTION and k == DEFAULT_PROJECTION_DIM:
                default_ratio[name] = ratio
            print(
                f"{name:<9} {label:<13} {rows:>5} {score_time:>8.4f} {train_time:>7.4f} {ratio:>7.2f} "
                f"{score_peak / 2**20:>9.2f} {train_peak / 2**20:>8.2f} {score_peak / train_peak:>6.2f} "
                f"{rho:>6.3f} {top:>6.2f} {error:>8.4f} {uniform:>8.4f}",
                flush=True,
            )
    worst = max(default_ratio, key=default_ratio.get)
    print(
        f"default: reduction={DEFAULT_REDUCTION}, projection_dim={DEFAULT_PROJECTION_DIM}, "
        f"largest ratio on model {worst}"
    )
    print(f"scoring/train-step ratio: {default_ratio[worst]:.2f}")


if __name__ == "__main__":
    main()
