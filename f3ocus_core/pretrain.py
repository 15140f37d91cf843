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
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from f3ocus_core.ablation import image_ablation
from f3ocus_core.data import easy_vqa
from f3ocus_core.families import family_named
from f3ocus_core.models import logits_of, loss_of
from f3ocus_core.progress import progress_bar
from f3ocus_core.training import Collate, make_collate

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
#: Built-in bases whose model config differs from their family's tiny config (the rest of the recipe
#: is shared): the small ViLT has 8 layers.
BUILTIN_OVERRIDES: dict[str, dict[str, object]] = {"builtin:small-vilt-easyvqa": {"num_hidden_layers": 8}}
#: Bump when the recipe below changes, so that old caches are not reused.
RECIPE_VERSION = 2
#: The build record saved next to a built-in base's ``config.json``: recipe, steps, seed, build
#: seconds and the image ablation on held-out client questions.
METADATA_FILE = "f3ocus_base.json"
#: Held-out client questions the build measures the image-ablation gap on.
HELD_OUT_QUESTIONS = 1000

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$F3OCUS_CACHE``, else ``$XDG_CACHE_HOME/f3ocus``, else ``~/.cache/f3ocus``."""
    if os.environ.get("F3OCUS_CACHE"):
        return Path(os.environ["F3OCUS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "f3ocus"


def resolve_model_path(
    name: str, cache_dir: str | Path = "", steps: int = 3000, seed: int = 0, exclude: tuple[str, ...] = ()
) -> str:
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


def ensure_base_checkpoint(
    cache_dir: str | Path, steps: int = 3000, seed: int = 0, name: str = BUILTIN_MODEL, exclude: tuple[str, ...] = ()
) -> Path:
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
        raise ValueError(
            f"model.pretrain-exclude: unknown question family {unknown}; choose from {list(easy_vqa.FAMILIES)}."
        )
    return "".join(f"-no-{family}" for family in sorted(set(exclude)))


def build_base_checkpoint(
    out_dir: str | Path, steps: int = 3000, seed: int = 0, name: str = BUILTIN_MODEL, exclude: tuple[str, ...] = ()
) -> dict[str, float]:
    """Train the built-in base ``name`` (its family's tiny model) on the easy-vqa base pool for
    ``steps`` steps (:data:`RECIPE`), measure whether it reads the image, and save model, processor
    and :data:`METADATA_FILE`.

    ``exclude`` (``model.pretrain-exclude``) leaves those question families
    (:data:`~f3ocus_core.data.easy_vqa.FAMILIES`) out of the training questions; the processor's
    vocabulary is still built from every question of the pool, so clients holding the excluded
    family meet no unknown word, only questions the base never learned to answer.

    Returns the metrics of the build: train ``loss``, ``steps``, ``train_seconds`` (encoding and
    training), ``seconds`` (the whole build), and the image ablation on held-out client questions
    (:func:`f3ocus_core.ablation.image_ablation`, keys prefixed ``heldout.``).
    """
    started = time.perf_counter()
    pool = base_questions(seed, exclude)
    kind = family_named(BUILTIN_MODELS[name])
    labels = easy_vqa.ANSWERS
    processor = kind.build_processor(list(base_questions(seed)["question"]), labels)
    config = kind.tiny_config(processor, labels)
    for key, value in BUILTIN_OVERRIDES.get(name, {}).items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = kind.model_class(config)
    collate = make_collate(processor, labels)
    log.info("Building the base checkpoint %s: %d steps on %d questions", name, steps, len(pool))
    with progress_bar(steps, f"base checkpoint {name}", unit="step") as bar:
        metrics = pretrain(
            model,
            pool,
            collate,
            steps,
            seed,
            RECIPE,
            on_step=lambda step, loss: (bar.update(step - bar.n), bar.set_postfix(loss=f"{loss:.3f}", refresh=False)),
        )
    metrics["train_seconds"] = time.perf_counter() - started
    held_out = easy_vqa.held_out_questions(seed, HELD_OUT_QUESTIONS)
    ablation = image_ablation(model, held_out, collate, easy_vqa.answer_type, seed=seed)
    metrics.update({f"heldout.{key}": value for key, value in ablation.items()})
    metrics["seconds"] = time.perf_counter() - started
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    metadata = {
        "name": name,
        "recipe_version": RECIPE_VERSION,
        "recipe": asdict(RECIPE),
        "steps": steps,
        "seed": seed,
        "exclude": sorted(set(exclude)),
        "metrics": metrics,
    }
    (Path(out_dir) / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
    log.info(
        "Base checkpoint %s built in %.0f s. On %d held-out client questions: accuracy %.3f with the "
        "real images, %.3f with shuffled images (image-ablation gap %.3f); colour questions %.3f",
        name,
        metrics["seconds"],
        int(ablation["n"]),
        ablation["real"],
        ablation["shuffled"],
        ablation["gap"],
        ablation.get("colour.real", float("nan")),
    )
    return metrics


def base_questions(seed: int = 0, exclude: tuple[str, ...] = ()) -> datasets.Dataset:
    """The questions the built-in bases pretrain on: the easy-vqa base pool (no client holds them),
    without the question families in ``exclude``."""
    return easy_vqa.base_pool(seed, exclude)


def base_metadata(path: str | Path) -> dict:
    """The build record (:data:`METADATA_FILE`) of a built-in base checkpoint folder."""
    file = Path(path) / METADATA_FILE
    if not file.exists():
        raise FileNotFoundError(
            f"{file}: no build record; the folder is not a built-in base of recipe v{RECIPE_VERSION}."
        )
    return json.loads(file.read_text())


@dataclass(frozen=True)
class Recipe:
    """How a built-in base is pretrained (see docs/models.md, "Built-in bases", for why).

    Parameters
    ----------
    lr : float
        Peak AdamW learning rate (linear warm-up over ``warmup`` of the steps, then linear decay).
    batch_size : int
        Questions per step.
    warmup : float
        Share of the steps spent warming the learning rate up.
    balanced : bool
        Draw the three question types (colour, shape, yes/no) equally often. The pool is 74% yes/no
        and 13% colour questions, and each colour is the answer of under 2% of the questions.
    softmax : bool
        Add softmax cross-entropy over the answers to the binary cross-entropy that clients train
        with (:func:`f3ocus_core.models.loss_of`): with binary cross-entropy alone the 8 colour answers,
        each the answer of under 2% of the questions, are pushed down on every other question and
        stay below the shapes (colour accuracy 0).
    weight_decay : float
        AdamW weight decay.
    """

    lr: float = 2e-3
    batch_size: int = 32
    warmup: float = 0.05
    balanced: bool = True
    softmax: bool = True
    weight_decay: float = 0.01


#: The recipe of every built-in base.
RECIPE = Recipe()


def pretrain(
    model: torch.nn.Module,
    pool: datasets.Dataset,
    collate: Collate,
    steps: int,
    seed: int,
    recipe: Recipe,
    on_step: Callable[[int, float], object] | None = None,
) -> dict[str, float]:
    """Pretrain ``model`` on the easy-vqa questions ``pool`` for ``steps`` steps of ``recipe``.

    The batches are drawn first and the rows they use encoded once (one collate); this is about three
    times faster on CPU than decoding and processing images every step.
    ``on_step(step, loss)`` is called after every step (a progress bar).
    Returns the mean ``loss`` of the last tenth of the steps and ``steps``.
    """
    answers = [answers[0] for answers in pool["answers"]]
    types = np.array([easy_vqa.answer_type([answer]) for answer in answers])
    weights = np.ones(len(pool))
    if recipe.balanced:
        for kind in set(types.tolist()):
            weights[types == kind] = 1.0 / (types == kind).sum()
    draws = np.random.default_rng(seed).choice(len(pool), (steps, recipe.batch_size), p=weights / weights.sum())
    # Only the rows some step draws are encoded (all of them in a real build, a few in a short one).
    needed, draws = np.unique(draws, return_inverse=True)
    draws = draws.reshape(steps, recipe.batch_size)
    encoded = collate([pool[int(i)] for i in needed])
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warmup = max(1, int(recipe.warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    losses: list[float] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.train()
        for step in range(steps):
            rows = torch.from_numpy(draws[step])
            batch = {key: value[rows] for key, value in encoded.items()}
            logits = logits_of(model, batch).float()
            loss = loss_of(logits, batch)
            if recipe.softmax:
                loss = loss + F.cross_entropy(logits, batch["labels"].argmax(dim=1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step + 1, losses[-1])
            if (step + 1) % 200 == 0 or step + 1 == steps:
                log.info("  base checkpoint: step %d/%d, loss %.3f", step + 1, steps, float(np.mean(losses[-50:])))
    model.eval()
    return {"loss": float(np.mean(losses[-max(1, steps // 10) :])), "steps": float(steps)}
