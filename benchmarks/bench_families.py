"""Build built-in bases and print whether they read the image: the image-ablation gap.

Each base is pretrained centrally on the easy-vqa base pool (``f3ocus_core.pretrain``, its real
recipe) for ``--steps`` steps, then answers held-out client questions (the client pool's test side,
which no base and no client trains on) with the real images and with the images shuffled among the
questions (``f3ocus_core.ablation``). Generative families are scored by closed-set ranking
(docs/models.md). The references that look at no image: the majority answer, and the question-only
prior (each held-out question answered with the answer most often given to the same question text
in the base pool).

    PYTHONPATH=. python benchmarks/bench_families.py --steps 3000 --bases tiny-vilt,small-vilt,tiny-llava
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter

import torch

from f3ocus_core.data import easy_vqa
from f3ocus_core.pretrain import BUILTIN_MODELS, HELD_OUT_QUESTIONS, build_base_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument(
        "--bases",
        default=",".join(name.removeprefix("builtin:").removesuffix("-easyvqa") for name in BUILTIN_MODELS),
        help="comma-separated, e.g. tiny-vilt,small-vilt,tiny-llava",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pool = easy_vqa.base_pool(0)
    held_out = easy_vqa.held_out_questions(0, HELD_OUT_QUESTIONS)
    majority = Counter(row[0] for row in held_out["answers"]).most_common(1)[0][1] / len(held_out)
    by_question: dict[str, Counter] = {}
    for question, answers in zip(pool["question"], pool["answers"], strict=True):
        by_question.setdefault(question, Counter())[answers[0]] += 1
    fallback = Counter(row[0] for row in pool["answers"]).most_common(1)[0][0]
    prior = sum(
        (by_question[q].most_common(1)[0][0] if q in by_question else fallback) in answers
        for q, answers in zip(held_out["question"], held_out["answers"], strict=True)
    ) / len(held_out)
    print(
        f"held-out {len(held_out)} client questions; majority-answer accuracy {majority:.3f}; "
        f"question-only prior {prior:.3f}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'base':<11} {'steps':>5} {'real':>6} {'shuffled':>8} {'gap':>6} {'colour':>6} {'shape':>6} "
        f"{'yes/no':>6} {'build s':>7}"
    )
    for short in args.bases.split(","):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            m = build_base_checkpoint(folder, args.steps, 0, f"builtin:{short}-easyvqa")
            seconds = time.perf_counter() - started
        print(
            f"{short:<11} {args.steps:>5} {m['heldout.real']:>6.3f} {m['heldout.shuffled']:>8.3f} "
            f"{m['heldout.gap']:>6.3f} {m['heldout.colour.real']:>6.3f} {m['heldout.shape.real']:>6.3f} "
            f"{m['heldout.yes/no.real']:>6.3f} {seconds:>7.1f}   (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
