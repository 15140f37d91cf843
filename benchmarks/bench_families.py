"""Build the tiny built-in base of each model family and print its held-out accuracy and build time.

Each base is pretrained centrally on the easy-vqa base pool (``f3ocus_core.pretrain``) for
``--steps`` steps; the held-out part is the pool's last 10%. Generative families are scored by
closed-set ranking (docs/models.md). Two references that look at no image are printed: the majority
answer's share of the held-out part, and the question-only prior (each held-out question answered
with the answer most often given to the same question text in the training part).

    PYTHONPATH=. python benchmarks/bench_families.py --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter

import torch

from f3ocus_core.data import easy_vqa
from f3ocus_core.families import FAMILIES
from f3ocus_core.pretrain import build_base_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = easy_vqa.base_pool(0)
    held_out = pool.select(range(len(pool) - max(1, len(pool) // 10), len(pool)))
    fit = pool.select(range(len(pool) - len(held_out)))
    majority = Counter(row[0] for row in held_out["answers"]).most_common(1)[0][1] / len(held_out)
    by_question: dict[str, Counter] = {}
    for question, answers in zip(fit["question"], fit["answers"], strict=True):
        by_question.setdefault(question, Counter())[answers[0]] += 1
    fallback = Counter(row[0] for row in fit["answers"]).most_common(1)[0][0]
    prior = sum(
        (by_question[q].most_common(1)[0][0] if q in by_question else fallback) in answers
        for q, answers in zip(held_out["question"], held_out["answers"], strict=True)
    ) / len(held_out)
    print(f"held-out {len(held_out)} questions; majority-answer accuracy {majority:.3f}; "
          f"question-only prior {prior:.3f}")
    print(f"{'family':<10} {'steps':>5} {'accuracy':>8} {'train loss':>10} {'seconds':>7}")
    for name in args.families.split(","):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            metrics = build_base_checkpoint(folder, args.steps, 0, f"builtin:tiny-{name}-easyvqa")
            seconds = time.perf_counter() - started
        print(f"{name:<10} {args.steps:>5} {metrics['accuracy']:>8.3f} {metrics['loss']:>10.3f} {seconds:>7.1f}")


if __name__ == "__main__":
    main()
