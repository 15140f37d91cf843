"""The built-in base checkpoints: a tiny model of each family (the default: ViLT) pretrained
centrally on easy-vqa images that no client holds, saved with ``save_pretrained`` and cached.
``builtin:tiny-vilt-easyvqa`` (4 layers) is the default run's; ``builtin:small-vilt-easyvqa`` is the
same recipe with 8 layers, for comparisons where the choice of 2-3 layers out of L should matter
(docs/results.md).

Federated fine-tuning in the paper starts from a pretrained model; this gives the default run one
without any download. The run then loads it with ``from_pretrained`` exactly as it would load a hub
id. The checkpoint is built once per (steps, seed, excluded question families) under a file lock,
in a temporary folder that is renamed into place when complete, so concurrent clients and
interrupted builds never see half a checkpoint.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from f3ocus_core.data import easy_vqa
from f3ocus_core.families import family_named
from f3ocus_core.progress import progress_bar
from f3ocus_core.training import TrainSettings, evaluate, make_collate, train

BUILTIN_MODEL = "builtin:tiny-vilt-easyvqa"
#: Every built-in base, and the model family it is a tiny model of.
BUILTIN_MODELS: dict[str, str] = {
    BUILTIN_MODEL: "vilt",
    "builtin:small-vilt-easyvqa": "vilt",
    "builtin:tiny-blip-easyvqa": "blip",
    "builtin:tiny-blip2-easyvqa": "blip2",
    "builtin:tiny-llava-easyvqa": "llava",
    "builtin:tiny-paligemma-easyvqa": "paligemma",
}
#: Built-in ViLT bases with more transformer layers than the family's tiny config (the rest of the
#: recipe is shared).
BUILTIN_LAYERS: dict[str, int] = {"builtin:small-vilt-easyvqa": 8}
#: Bump when the recipe below changes, so that old caches are not reused.
RECIPE_VERSION = 1

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$F3OCUS_CACHE``, else ``$XDG_CACHE_HOME/f3ocus``, else ``~/.cache/f3ocus``."""
    if os.environ.get("F3OCUS_CACHE"):
        return Path(os.environ["F3OCUS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "f3ocus"


def resolve_model_path(name: str, cache_dir: str | Path = "", steps: int = 400, seed: int = 0,
                       exclude: tuple[str, ...] = ()) -> str:
    """The path or hub id to load for ``model.name``, building the built-in checkpoint if needed
    (``exclude``: ``model.pretrain-exclude``, the question families its pretraining leaves out)."""
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            raise ValueError(
                f"model.name: unknown built-in model {name!r}; the built-ins are {sorted(BUILTIN_MODELS)}."
            )
        return str(ensure_base_checkpoint(cache_dir or default_cache_dir(), steps, seed, name, exclude))
    if not name:
        raise ValueError("model.name: empty; give a local folder, a hub id or " + BUILTIN_MODEL)
    return name


def ensure_base_checkpoint(cache_dir: str | Path, steps: int = 400, seed: int = 0, name: str = BUILTIN_MODEL,
                           exclude: tuple[str, ...] = ()) -> Path:
    """The folder of the built-in base checkpoint ``name`` for (``steps``, ``seed``, ``exclude``), built
    first if missing; the excluded question families are part of the folder name."""
    if steps < 1:
        raise ValueError(f"model.pretrain-steps: must be >= 1, got {steps}.")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name.removeprefix('builtin:')}-v{RECIPE_VERSION}-steps{steps}-seed{seed}{_excluded(exclude)}"
    if (target / "config.json").exists():
        return target
    with open(cache / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
            try:
                build_base_checkpoint(scratch, steps, seed, name, exclude)
                scratch.rename(target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return target


def _excluded(exclude: tuple[str, ...]) -> str:
    """The cache-folder suffix of ``model.pretrain-exclude`` (empty when nothing is excluded)."""
    unknown = sorted(set(exclude) - set(easy_vqa.FAMILIES))
    if unknown:
        raise ValueError(f"model.pretrain-exclude: unknown question family {unknown}; choose from "
                         f"{list(easy_vqa.FAMILIES)}.")
    return "".join(f"-no-{family}" for family in sorted(set(exclude)))


def build_base_checkpoint(out_dir: str | Path, steps: int = 400, seed: int = 0,
                          name: str = BUILTIN_MODEL, exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """Train the built-in base ``name`` (its family's tiny model) on the easy-vqa base pool for
    ``steps`` steps and save model + processor.

    ``exclude`` (``model.pretrain-exclude``) leaves those question families
    (:data:`~f3ocus_core.data.easy_vqa.FAMILIES`) out of the training questions; the processor's
    vocabulary is still built from every question of the pool, so clients holding the excluded
    family meet no unknown word, only questions the base never learned to answer.

    Returns the metrics of the build (train loss, held-out accuracy of the base pool's last 10%).
    """
    started = time.perf_counter()
    vocabulary = easy_vqa.base_pool(seed)["question"]
    pool = easy_vqa.base_pool(seed, exclude)
    held_out = max(1, len(pool) // 10)
    fit, check = pool.select(range(len(pool) - held_out)), pool.select(range(len(pool) - held_out, len(pool)))
    kind = family_named(BUILTIN_MODELS[name])
    labels = easy_vqa.ANSWERS
    processor = kind.build_processor(vocabulary, labels)
    config = kind.tiny_config(processor, labels)
    if name in BUILTIN_LAYERS:
        config.num_hidden_layers = BUILTIN_LAYERS[name]
    torch.manual_seed(seed)
    model = kind.model_class(config)
    collate = make_collate(processor, labels)
    log.info("Building the base checkpoint %s: %d steps on %d questions", name, steps, len(fit))

    bar = progress_bar(steps, f"base checkpoint {name}", unit="step")

    def progress(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step % 100 == 0 or step == steps:
            log.info("  base checkpoint: step %d/%d, loss %.3f", step, steps, loss)

    settings = TrainSettings(epochs=10_000, lr=2e-3, batch_size=32, warmup=0.05, max_steps=steps)
    with bar:
        metrics = train(model, fit, collate, settings, seed=seed, on_step=progress)
    metrics.update(evaluate(model, check, collate, "vqa"))
    metrics["seconds"] = time.perf_counter() - started
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    log.info(
        "Base checkpoint built in %.0f s: held-out accuracy %.3f", metrics["seconds"], metrics["accuracy"]
    )
    return metrics
