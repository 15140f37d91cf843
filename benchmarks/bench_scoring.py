"""Cost and accuracy of LNTK layer scoring next to one local training step.

For a "tiny" ViLT (hidden 64, 4 layers) and a "small" one (hidden 256, 8 layers: ViLT is single-stream,
so the issue's "4 + 4 layers" of a two-tower model become 8 layers of one tower), on one batch of 8:

- time: median wall time of scoring all layers with ``score_layers(method="lntk")`` and of one
  training step (forward, backward, AdamW step, all parameters trainable), in this one process,
  single-threaded (``torch.set_num_threads(1)``), the two called alternately after a warm-up call
  each (the training step is re-timed for every row, so its column varies with machine load);
- peak memory: the peak of torch's CPU tensor allocations during the call, above what was allocated
  when it started, from ``torch.profiler.profile(profile_memory=True)`` (allocations and frees summed
  in time order at operator granularity; Python objects are not counted). The training step is
  measured in steady state, so AdamW's moment buffers already exist;
- accuracy of the projected reduction: over ``--seeds`` projection seeds, the mean relative error
  ``|S_proj - S_exact| / S_exact`` of the normalised scores and the mean Spearman rank correlation,
  against the exact ``"logits"`` reduction.

Run: ``.venv/bin/python benchmarks/bench_scoring.py``. The last line is the ratio for the default
reduction on the small model.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.profiler import ProfilerActivity, profile

from f3ocus_core.importance import DEFAULT_PROJECTION_DIM, DEFAULT_REDUCTION, score_layers
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import logits_of, loss_of, random_batch, tiny_vilt

SIZES: dict[str, dict[str, int]] = {
    "tiny": {},
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
    },
}


def paired_times(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[float, float]:
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
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in prof.events()
        if event.self_cpu_memory_usage
    )
    level = peak = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


def train_step_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One local training step: forward, backward, AdamW step (lr 1e-4, weight decay 0.01)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_of(logits_of(model, batch), batch).backward()
        optimizer.step()

    return step


def projection_error(model, batch, layer_map, k: int, seeds: int, exact: np.ndarray) -> tuple[float, float]:
    """Mean relative error of normalised scores and mean Spearman rho over projection seeds."""
    errors, rhos = [], []
    for seed in range(seeds):
        got = score_layers(model, batch, layer_map, reduction="projection", projection_dim=k, seed=seed)
        errors.append(float(np.mean(np.abs(got.normalized - exact) / exact)))
        rhos.append(float(spearmanr(got.normalized, exact).statistic))
    return float(np.mean(errors)), float(np.mean(rhos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--seeds", type=int, default=5, help="projection seeds for the error")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dims", nargs="+", type=int, default=[1, 8], help="projection dimensions k")
    args = parser.parse_args()
    torch.set_num_threads(1)

    header = (
        f"{'model':<6} {'params':>7} {'reduction':<13} {'rows':>5} {'score s':>8} {'train s':>8} "
        f"{'time x':>7} {'score MiB':>10} {'train MiB':>10} {'mem x':>6} {'S rel.err':>10} {'rho':>6}"
    )
    print(header)
    print("-" * len(header))
    default_ratio = {}
    for size in args.sizes:
        model = tiny_vilt(seed=0, **SIZES[size])
        batch = random_batch(model.config, n=args.batch_size, seed=0)
        layer_map = layer_map_for(model)
        params = sum(p.numel() for p in model.parameters())
        train_model = tiny_vilt(seed=0, **SIZES[size])
        step = train_step_fn(train_model, batch)
        train_peak = peak_allocated_bytes(step)
        exact = score_layers(model, batch, layer_map, reduction="logits").normalized
        kappa = model.config.num_labels
        dims = sorted(set(args.dims) | {DEFAULT_PROJECTION_DIM})
        settings = [("projection", k) for k in dims] + [("logits", 0)]
        for reduction, k in settings:
            dim = k if reduction == "projection" else DEFAULT_PROJECTION_DIM

            def score(reduction: str = reduction, dim: int = dim) -> None:
                score_layers(model, batch, layer_map, reduction=reduction, projection_dim=dim)

            train_time, score_time = paired_times(step, score, args.repeats)
            score_peak = peak_allocated_bytes(score)
            if reduction == "projection":
                error, rho = projection_error(model, batch, layer_map, k, args.seeds, exact)
                label, rows = f"projection k={k}", args.batch_size * k
                accuracy = f"{error:>10.4f} {rho:>6.3f}"
            else:
                label, rows = f"logits κ={kappa}", args.batch_size * kappa
                accuracy = f"{'exact':>10} {'1':>6}"
            ratio = score_time / train_time
            if reduction == DEFAULT_REDUCTION and (reduction == "logits" or k == DEFAULT_PROJECTION_DIM):
                default_ratio[size] = ratio
            print(
                f"{size:<6} {params / 1e6:>6.2f}M {label:<13} {rows:>5} {score_time:>8.4f} "
                f"{train_time:>8.4f} {ratio:>7.2f} {score_peak / 2**20:>10.2f} "
                f"{train_peak / 2**20:>10.2f} {score_peak / train_peak:>6.2f} {accuracy}"
            )
    reported = "small" if "small" in default_ratio else next(iter(default_ratio))
    print(
        f"default: reduction={DEFAULT_REDUCTION}, projection_dim={DEFAULT_PROJECTION_DIM}, "
        f"batch {args.batch_size}, model {reported}"
    )
    print(f"scoring/train-step ratio: {default_ratio[reported]:.2f}")


if __name__ == "__main__":
    main()
