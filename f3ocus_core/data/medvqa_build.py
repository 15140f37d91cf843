"""The offline builder of MedVQA-FL: ``f3ocus-build-medvqa``, from MedMNIST v2 2D ``.npz`` files.

``f3ocus-build-medvqa --medmnist-dir DIR --out OUT`` (or :func:`build_medvqa_fl`) reads the twelve
MedMNIST files that make up the nine clients of :data:`medvqa.CLIENTS` (the MedVQA-FL benchmark of
Saha et al., CVPR 2025, arXiv 2411.11912) and writes, per client, a ``train`` and a ``test``
:class:`datasets.Dataset` (``datasets.save_to_disk`` format) plus a manifest ``medvqa_fl.json`` with
the counts, question-type shares and each client's answer vocabulary. Runs read the build with
:func:`f3ocus_core.data.medvqa.load_medvqa_client`.

How a client is built, all seeded from ``seed`` and the client's fixed position in :data:`CLIENTS`
(so a partial build gives the same rows for the clients it has):

1. Its images are every image of all splits (train, val, test) of its source files, in file order:
   one question per image, so the client size is the number of images.
2. Each image gets a question type: the client's :attr:`MedVQAClient.type_weights` are turned into
   exact counts (largest remainder) and shuffled, so the shares are those weights up to rounding.
   The weights are chosen so that, over the full data, the shares come close to the paper's
   (:func:`expected_shares`); grading exists only for fundus images, which caps it near 0.2%.
3. The question and answer come from :mod:`f3ocus_core.data.question_templates`.
4. 20% of the images, drawn at random, form the test part; the rest the train part.

With all twelve files present the client sizes are the paper's, except abdominal CT: the OrganA/C/S
files hold 58,850 + 23,660 + 25,221 = 107,731 images where the paper says 107,624, so the total is
708,069 rather than the paper's 707,962. The builder prints both.

Images are stored as PNG bytes. The build streams the files (no client is held in memory), writes
into a temporary sibling of ``OUT`` and renames it into place only when every client is written.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets.exceptions import DatasetGenerationError
from PIL import Image

from f3ocus_core.data.medmnist_classes import MEDMNIST_2D, SPLITS
from f3ocus_core.data.medmnist_npz import NpzSplit, inspect_npz, iter_images, read_labels
from f3ocus_core.data.medvqa import CLIENTS, FORMAT, MANIFEST, MedVQAClient
from f3ocus_core.data.question_templates import PAPER_SHARES, QUESTION_TYPES, ask
from f3ocus_core.data.records import FEATURES, answer_type_of, holdout_mask
from f3ocus_core.progress import progress_bar


def npz_path(medmnist_dir: Path | str, flag: str, size: int = 28) -> Path:
    """Where ``medmnist`` puts ``flag``'s file: ``flag.npz`` (``flag_{size}.npz`` for MedMNIST+)."""
    return Path(medmnist_dir) / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def type_counts(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``n`` images into exact per-type counts proportional to ``weights`` (largest remainder)."""
    types = list(weights)
    raw = np.array([weights[t] for t in types], dtype=float)
    raw = raw / raw.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return dict(zip(types, counts.tolist()))


def expected_shares(sizes: dict[str, int] | None = None) -> dict[str, float]:
    """Question-type shares that :data:`CLIENTS`' weights give for client ``sizes`` (default: the paper's)."""
    sizes = sizes or {client.name: client.paper_size for client in CLIENTS}
    total = sum(sizes.values())
    return {
        qtype: sum(sizes[c.name] * c.type_weights.get(qtype, 0.0) for c in CLIENTS if c.name in sizes) / total
        for qtype in QUESTION_TYPES
    }


@dataclass
class _Plan:
    """Everything about a client's rows except the pixels, which are streamed at write time."""

    question: list[str]
    answer: list[str]
    question_type: list[str]
    source: list[str]
    source_split: list[str]
    is_test: np.ndarray


def _plan_client(index: int, client: MedVQAClient, files: dict[str, Path], seed: int, test_share: float) -> _Plan:
    """Question types, questions, answers and train/test side of every image (steps 1-4 above)."""
    type_seed, question_seed, split_seed = np.random.SeedSequence([seed, index]).spawn(3)
    type_rng, question_rng = np.random.default_rng(type_seed), np.random.default_rng(question_seed)
    labels: list[tuple[str, str, np.ndarray]] = []
    for flag, path in files.items():
        for split in SPLITS:
            labels.append((flag, split, read_labels(path, split, MEDMNIST_2D[flag])))
    n = sum(len(block) for _, _, block in labels)
    if n < 2:
        raise ValueError(
            f"MedVQA-FL client {client.name!r} has {n} image(s) in {', '.join(map(str, files.values()))}; "
            "it needs at least 2 for a train/test split."
        )
    counts = type_counts(n, client.type_weights)
    qtypes = type_rng.permutation(np.repeat(list(counts), list(counts.values()))).tolist()
    plan = _Plan([], [], qtypes, [], [], holdout_mask(n, split_seed, test_share))
    row = 0
    for flag, split, block in labels:
        for label in block:
            question, answer = ask(flag, qtypes[row], label, question_rng)
            plan.question.append(question)
            plan.answer.append(answer)
            plan.source.append(flag)
            plan.source_split.append(split)
            row += 1
    return plan


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _examples(client: str, files: tuple[tuple[str, str], ...], plan: _Plan, test: bool) -> Iterator[dict]:
    """Rows of one part (train or test) of a client, streaming the images from the files.

    ``files`` must not be a list: ``datasets`` would treat a list argument as shards and call this
    once per file, restarting the row count.
    """
    row = 0
    for flag, path in files:
        for split in SPLITS:
            for image in iter_images(Path(path), split):
                if plan.is_test[row] == test:
                    yield {
                        "image": {"bytes": _png(image), "path": None},
                        "question": plan.question[row],
                        "answers": [plan.answer[row]],
                        "answer_type": answer_type_of(plan.answer[row]),
                        "question_type": plan.question_type[row],
                        "client": client,
                        "source": flag,
                        "source_split": plan.source_split[row],
                        "split": "test" if test else "train",
                    }
                row += 1


@dataclass
class BuildReport:
    """What a build wrote: per-client counts, question-type shares and the files it lacked."""

    out: Path
    clients: list[dict]
    missing: list[str]

    def shares(self) -> dict[str, float]:
        """Overall share of each question type over all built clients."""
        total: Counter[str] = Counter()
        for client in self.clients:
            total.update(client["question_types"])
        n = sum(total.values())
        return {qtype: total[qtype] / n for qtype in QUESTION_TYPES}

    def format(self) -> str:
        """The table the command prints."""
        lines = [f"MedVQA-FL written to {self.out}", ""]
        lines.append(f"{'client':<18} {'sources':<40} {'images':>9} {'train':>9} {'test':>8} {'paper':>9}")
        for c in self.clients:
            lines.append(
                f"{c['name']:<18} {', '.join(c['sources']):<40} {c['images']:>9,} {c['train']:>9,} "
                f"{c['test']:>8,} {c['paper_size']:>9,}"
            )
        totals = {k: sum(c[k] for c in self.clients) for k in ("images", "train", "test", "paper_size")}
        lines.append(
            f"{'total':<18} {'':<40} {totals['images']:>9,} {totals['train']:>9,} {totals['test']:>8,} "
            f"{totals['paper_size']:>9,}"
        )
        full = expected_shares({c.name: sum(MEDMNIST_2D[f].total for f in c.sources) for c in CLIENTS})
        lines += ["", f"{'question type':<14} {'share':>7} {'full':>7} {'paper':>7}"]
        for qtype, share in self.shares().items():
            lines.append(f"{qtype:<14} {share:>7.1%} {full[qtype]:>7.1%} {PAPER_SHARES[qtype]:>7.1%}")
        lines.append("(share: this build; full: these weights on the complete MedMNIST files; paper: Saha et al. 2025)")
        if self.missing:
            lines += ["", "skipped, files missing: " + ", ".join(self.missing)]
        return "\n".join(lines)


def build_medvqa_fl(
    medmnist_dir: Path | str,
    out: Path | str,
    *,
    seed: int = 0,
    size: int = 28,
    test_share: float = 0.2,
    allow_missing: bool = False,
    overwrite: bool = False,
) -> BuildReport:
    """Build MedVQA-FL from the MedMNIST files in ``medmnist_dir`` into ``out``.

    Parameters
    ----------
    medmnist_dir : path
        Folder with the ``.npz`` files as the ``medmnist`` package downloads them.
    out : path
        Folder to create; it must not exist unless ``overwrite``.
    seed : int
        Seed of question types, phrasings and train/test split.
    size : int
        MedMNIST image size: 28 reads ``flag.npz``, other sizes read MedMNIST+ ``flag_{size}.npz``.
    test_share : float
        Share of each client's images in its test part.
    allow_missing : bool
        Build each client from those of its files that exist and skip clients with none, instead of
        stopping at the first missing file.
    overwrite : bool
        Replace an existing ``out`` (only once the new build is complete).

    Raises ``FileNotFoundError`` naming missing files, ``ValueError`` naming a malformed file and key,
    ``FileExistsError`` if ``out`` exists; in every case nothing is left at ``out`` or beside it.
    """
    medmnist_dir, out = Path(medmnist_dir), Path(out)
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be in (0, 1), got {test_share}.")
    if not medmnist_dir.is_dir():
        raise FileNotFoundError(f"MedMNIST folder {medmnist_dir} does not exist.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite.")
    plans, missing = _resolve_files(medmnist_dir, size, allow_missing)
    for files in plans.values():
        for flag, path in files.items():
            _check_not_empty(inspect_npz(path, MEDMNIST_2D[flag]))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        summaries = []
        with progress_bar(2 * len(plans), "MedVQA-FL", unit="part") as bar:
            for index, client in enumerate(CLIENTS):
                if client.name in plans:
                    bar.set_postfix_str(client.name)
                    summaries.append(
                        _write_client(tmp, index, client, plans[client.name], seed, test_share, bar.update)
                    )
        manifest = {
            "format": FORMAT,
            "seed": seed,
            "size": size,
            "test_share": test_share,
            "missing_files": missing,
            "clients": summaries,
        }
        report = BuildReport(out, summaries, missing)
        manifest["question_type_shares"] = report.shares()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()
    return report


def _resolve_files(medmnist_dir: Path, size: int, allow_missing: bool) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Client name -> {flag: file} for the clients that can be built, and the missing files."""
    plans: dict[str, dict[str, Path]] = {}
    missing: list[str] = []
    for client in CLIENTS:
        files = {flag: npz_path(medmnist_dir, flag, size) for flag in client.sources}
        missing += [str(path) for path in files.values() if not path.is_file()]
        present = {flag: path for flag, path in files.items() if path.is_file()}
        if present:
            plans[client.name] = present
    if missing and not allow_missing:
        raise FileNotFoundError(
            "MedMNIST file(s) missing: " + ", ".join(missing) + ". Download them with the medmnist "
            "package (or from Zenodo record 6496656) into that folder, or pass --allow-missing to build "
            "the clients whose files are present."
        )
    if not plans:
        raise FileNotFoundError(f"No MedMNIST .npz file of MedVQA-FL found in {medmnist_dir}.")
    return plans, missing


def _check_not_empty(splits: dict[str, NpzSplit]) -> None:
    if sum(part.count for part in splits.values()) == 0:
        raise ValueError(f"{splits['train'].path}: holds no images in any split; download it again.")


def _write_client(
    tmp: Path,
    index: int,
    client: MedVQAClient,
    files: dict[str, Path],
    seed: int,
    test_share: float,
    part_done: Callable[[], object] = lambda: None,
) -> dict:
    """Write one client's train and test datasets under ``tmp`` and return its manifest entry
    (``part_done`` is called after each part, for the progress bar)."""
    plan = _plan_client(index, client, files, seed, test_share)
    ordered = tuple((flag, str(path)) for flag, path in files.items())
    counts = {}
    for part, test in (("train", False), ("test", True)):
        try:
            dataset = datasets.Dataset.from_generator(
                _examples,
                features=FEATURES,
                cache_dir=str(tmp / ".cache"),
                gen_kwargs={"client": client.name, "files": ordered, "plan": plan, "test": test},
            )
        except DatasetGenerationError as error:
            if isinstance(error.__cause__, (ValueError, OSError)):
                raise error.__cause__ from None  # our own message names the file and key
            raise
        dataset.save_to_disk(str(tmp / client.name / part))
        counts[part] = len(dataset)
        part_done()
        del dataset
    return {
        "name": client.name,
        "modality": client.modality,
        "sources": list(files),
        "files": [Path(path).name for _, path in ordered],
        "images": len(plan.question),
        "train": counts["train"],
        "test": counts["test"],
        "paper_size": client.paper_size,
        "source_images": dict(Counter(plan.source)),
        "question_types": {qtype: plan.question_type.count(qtype) for qtype in QUESTION_TYPES},
        "answers": sorted(set(plan.answer)),
    }


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished build into place; an old ``out`` is removed only after the swap."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``f3ocus-build-medvqa``: build MedVQA-FL and print per-client counts and question-type shares."""
    parser = argparse.ArgumentParser(
        prog="f3ocus-build-medvqa",
        description="Build the nine MedVQA-FL clients (Saha et al., CVPR 2025) from MedMNIST v2 2D .npz files.",
    )
    add = parser.add_argument
    add("--medmnist-dir", required=True, type=Path, help="folder with pathmnist.npz, chestmnist.npz, ...")
    add("--out", required=True, type=Path, help="folder to create with the built clients")
    add("--seed", type=int, default=0, help="seed of question types, phrasings and splits (0)")
    add("--size", type=int, default=28, choices=(28, 64, 128, 224), help="MedMNIST(+) image size (28)")
    add("--test-share", type=float, default=0.2, help="share of each client's images in its test part (0.2)")
    add("--allow-missing", action="store_true", help="build the clients whose files are present")
    add("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        report = build_medvqa_fl(
            args.medmnist_dir,
            args.out,
            seed=args.seed,
            size=args.size,
            test_share=args.test_share,
            allow_missing=args.allow_missing,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"f3ocus-build-medvqa: error: {error}", file=sys.stderr)
        return 1
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
