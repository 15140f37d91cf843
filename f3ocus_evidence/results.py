"""The comparison the paper makes, as data: named methods (each a set of run-config overrides), what a
finished run's ``metrics.jsonl`` says about it, paired statistics over seeds, and the table and
figures of a grid of runs (``f3ocus-compare`` runs the grid; :mod:`f3ocus_evidence.compare`).

The paper's claim is a difference: F3OCUS against LNTK alone (each client its own top-b by LNTK) and
against the best other layer selector. With a handful of seeds that difference is only worth its
spread, so every difference here is paired by seed (same data split, base checkpoint and client
order) and carries a bootstrap 95% interval over seeds.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

F3OCUS_SELECTORS = ("nsga2", "mopso", "aco", "abc", "sa", "exact")
OTHER_SCORERS = (
    "fd",
    "last",
    "magnitude",
    "fishmask",
    "gradflow",
    "grasp",
    "snip",
    "rgn",
    "synflow",
    "fedselect",
    "spt",
)
REFERENCE = "lntk-alone"
#: The paper's PEFT table, each mode in every layer (LoRA in every layer is ``all-layers``).
PEFT_ROWS = ("full", "adapter", "layernorm", "bias", "prompt", "ia3")


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Parameters
    ----------
    name : str
        The row's name (and its cells' folder prefix).
    kind : str
        ``f3ocus`` (LNTK scores + a server-side selector), ``reference`` (LNTK alone), ``selector``
        (another scorer, each client its own top-b), ``all`` (every layer), ``peft`` (one PEFT mode
        in every layer), ``fixed`` (every client the same given layers) or ``control``.
    overrides : dict
        Run-config keys the row sets; ``selection.budget = "all"`` stands for the model's layer count.
    about : str
        One line for the table.
    """

    name: str
    kind: str
    overrides: dict = field(default_factory=dict)
    about: str = ""

    def run_config(self, num_layers: int) -> dict:
        """The row's overrides with ``"all"`` budgets resolved to ``num_layers``."""
        return {key: (str(num_layers) if value == "all" else value) for key, value in self.overrides.items()}


def _methods() -> dict[str, Method]:
    rows = [
        Method(
            f"f3ocus-{algorithm}",
            "f3ocus",
            {"scoring.method": "lntk", "selection.algorithm": algorithm},
            f"F3OCUS: LNTK scores, server-side {algorithm} selection",
        )
        for algorithm in F3OCUS_SELECTORS
    ]
    rows.append(
        Method(
            REFERENCE,
            "reference",
            {"scoring.method": "lntk", "selection.algorithm": "local"},
            "LNTK alone: each client its own top-b by LNTK",
        )
    )
    rows += [
        Method(
            scorer,
            "selector",
            {"scoring.method": scorer, "selection.algorithm": "local"},
            f"each client its own top-b by {scorer}" + (" (random layers, FedRA-like)" if scorer == "fd" else ""),
        )
        for scorer in OTHER_SCORERS
    ]
    rows.append(
        Method(
            "all-layers",
            "all",
            {"scoring.method": "last", "selection.algorithm": "local", "selection.budget": "all"},
            "every client trains every layer",
        )
    )
    rows += [
        Method(
            f"peft-{mode}",
            "peft",
            {"peft.method": mode, "scoring.method": "last", "selection.algorithm": "local", "selection.budget": "all"},
            f"the paper's PEFT row: {mode} units in every layer",
        )
        for mode in PEFT_ROWS
    ]
    rows.append(
        Method(
            "f3ocus-adapter",
            "f3ocus",
            {"peft.method": "adapter", "scoring.method": "lntk", "selection.algorithm": "nsga2"},
            "F3OCUS (nsga2) on bottleneck adapters instead of LoRA",
        )
    )
    rows.append(
        Method(
            "heads-only",
            "control",
            {"control": "heads-only", "scoring.method": "last"},
            "control: personal heads only, no shared layer trained",
        )
    )
    rows.append(
        Method(
            "local-only",
            "control",
            {"control": "local-only", "scoring.method": "lntk", "selection.algorithm": "nsga2"},
            "control: F3OCUS's layers trained locally, nothing averaged",
        )
    )
    return {row.name: row for row in rows}


#: Every method by name, in table order.
METHODS: dict[str, Method] = _methods()


def method_named(name: str) -> Method:
    """The method called ``name``: one of :data:`METHODS`, or ``fixed-<i>+<j>...`` (every client trains
    layers i, j, ...; the rows that show how much the choice of layers matters in a setting, one per
    layer set, so not listed in :data:`METHODS`).
    Raises ``KeyError`` for any other name."""
    if name in METHODS:
        return METHODS[name]
    found = re.fullmatch(r"fixed-(\d+(?:\+\d+)*)", name)
    if found is None:
        raise KeyError(name)
    layers = found.group(1)
    return Method(
        name,
        "fixed",
        {
            "scoring.method": "last",
            "selection.algorithm": "fixed",
            "selection.params": f"layers={layers}",
            "selection.budget": str(layers.count("+") + 1),
        },
        f"every client trains layers {layers.replace('+', ', ')}",
    )


def is_method(name: str) -> bool:
    """Whether :func:`method_named` knows ``name``."""
    try:
        method_named(name)
    except KeyError:
        return False
    return True


@dataclass
class CellResult:
    """What one finished run (method x seed) measured."""

    method: str
    seed: int
    folder: str
    metric_name: str
    curve: list[float]
    upload_mbit: float
    seconds_round: float
    final_loss: float = float("nan")

    @property
    def final(self) -> float:
        """The task metric after the last round."""
        return self.curve[-1]


def read_rows(folder: str | Path) -> list[dict]:
    """The ``metrics.jsonl`` rows of a run folder (empty if there is none)."""
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def upload_mbit_per_client(row: dict) -> float:
    """Mbit a client uploads in the round of ``row``: the mean, over the clients sent a ``train``
    message, of their accepted update's bytes x 8 / 1e6 (0 for a client whose update was rejected)."""
    clients = list(row["bytes_down"]["train"])
    if not clients:
        return 0.0
    return float(np.mean([row["bytes_up"].get(client, 0) for client in clients])) * 8 / 1e6


def cell_result(method: str, seed: int, folder: str | Path) -> CellResult:
    """Summarise a finished run: its metric per round (round 0 first), mean upload and seconds per
    round over rounds 1..R."""
    rows = sorted(read_rows(folder), key=lambda row: row["round"])
    trained = [row for row in rows if row["round"] > 0]
    if not trained:
        raise ValueError(f"{folder}: no round after round 0 in metrics.jsonl; the run did not finish a round.")
    # A round no client evaluated has no metric (null in its row): NaN here.
    number = lambda value: float("nan") if value is None else float(value)  # noqa: E731
    name = next((row["metric_name"] for row in reversed(rows) if row["metric_name"]), "")
    return CellResult(
        method,
        seed,
        str(folder),
        name,
        [number(row["metric"]) for row in rows],
        float(np.mean([upload_mbit_per_client(row) for row in trained])),
        float(np.mean([row["seconds_round"] for row in trained])),
        number(rows[-1]["loss"]),
    )


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement).

    With n values the interval can only use the n^n resamples there are: for n = 1 it is the value
    itself, for n = 2 or 3 it is coarse; it says how far the seeds disagree, not a guarantee.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_ci: no values.")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


@dataclass(frozen=True)
class PairedDifference:
    """``method - other`` over the seeds both have: the mean difference, its bootstrap interval,
    and how many seeds it rests on."""

    mean: float
    low: float
    high: float
    seeds: int


def paired_difference(
    method: Mapping[int, float], other: Mapping[int, float], resamples: int = 10_000
) -> PairedDifference | None:
    """Differences seed by seed (``method[s] - other[s]``); None if they share no seed."""
    seeds = sorted(set(method) & set(other))
    if not seeds:
        return None
    diffs = [method[s] - other[s] for s in seeds]
    low, high = bootstrap_ci(diffs, resamples=resamples)
    return PairedDifference(float(np.mean(diffs)), low, high, len(seeds))


@dataclass
class TableRow:
    """One method's line of the table."""

    method: str
    about: str
    metric_name: str
    finals: dict[int, float]
    mean: float
    std: float
    loss: float
    vs_reference: PairedDifference | None
    vs_best_other: PairedDifference | None
    best_other: str
    upload_mbit: float
    seconds_round: float
    folders: list[str]


def build_table(cells: Sequence[CellResult], order: Sequence[str]) -> list[TableRow]:
    """Per method (in ``order``): final metric mean and sample std over seeds, mean final loss, the paired
    difference to LNTK alone and to the best other selector (the ``selector`` row with the highest
    mean; a ``selector`` row is compared with the best of the others), upload Mbit per client per
    round and seconds per round (means over seeds)."""
    by_method: dict[str, list[CellResult]] = {}
    for cell in cells:
        by_method.setdefault(cell.method, []).append(cell)
    finals = {name: {c.seed: c.final for c in group} for name, group in by_method.items()}
    means = {name: float(np.mean(list(values.values()))) for name, values in finals.items()}
    selectors = [name for name in by_method if name in METHODS and METHODS[name].kind == "selector"]
    rows = []
    for name in [n for n in order if n in by_method]:
        group = sorted(by_method[name], key=lambda c: c.seed)
        values = [c.final for c in group]
        others = [s for s in selectors if s != name]
        best = max(others, key=lambda s: means[s]) if others else ""
        rows.append(
            TableRow(
                method=name,
                about=method_named(name).about if is_method(name) else "",
                metric_name=group[0].metric_name,
                finals=finals[name],
                mean=float(np.mean(values)),
                std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                loss=float(np.mean([c.final_loss for c in group])),
                vs_reference=paired_difference(finals[name], finals[REFERENCE])
                if REFERENCE in finals and name != REFERENCE
                else None,
                vs_best_other=paired_difference(finals[name], finals[best]) if best else None,
                best_other=best,
                upload_mbit=float(np.mean([c.upload_mbit for c in group])),
                seconds_round=float(np.mean([c.seconds_round for c in group])),
                folders=[c.folder for c in group],
            )
        )
    return rows


def _difference_text(diff: PairedDifference | None) -> str:
    if diff is None:
        return "-"
    return f"{diff.mean:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]"


def write_table(rows: Sequence[TableRow], out_dir: str | Path, header: str = "") -> tuple[Path, Path]:
    """Write ``table.md`` (with links to each cell's folder, relative to ``out_dir``) and
    ``table.csv`` (one line per method, the numbers at full precision)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = rows[0].metric_name if rows else "metric"
    lines = [header, ""] if header else []
    lines += [
        f"| method | seeds | final {metric} (mean ± std) | Δ vs LNTK alone [95% CI] | "
        f"Δ vs best other selector [95% CI] | final loss | upload Mbit / client / round | s / round | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        links = " ".join(
            f"[{seed}]({Path(folder).resolve().relative_to(out.resolve())})"
            for seed, folder in zip(sorted(row.finals), row.folders)
        )
        best = f" ({row.best_other})" if row.vs_best_other else ""
        lines.append(
            f"| {row.method} | {len(row.finals)} | {row.mean:.4f} ± {row.std:.4f} | "
            f"{_difference_text(row.vs_reference)} | {_difference_text(row.vs_best_other)}{best} | "
            f"{row.loss:.4f} | {row.upload_mbit:.3f} | {row.seconds_round:.1f} | {links} |"
        )
    lines += ["", "What each row is:", ""]
    lines += [f"- `{row.method}`: {row.about}" for row in rows]
    md = out / "table.md"
    md.write_text("\n".join(lines) + "\n")
    path = out / "table.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "method",
                "metric_name",
                "seeds",
                "finals",
                "mean",
                "std",
                "diff_lntk_alone",
                "diff_lntk_alone_low",
                "diff_lntk_alone_high",
                "best_other_selector",
                "diff_best_other",
                "diff_best_other_low",
                "diff_best_other_high",
                "final_loss",
                "upload_mbit_per_client_round",
                "seconds_per_round",
                "runs",
            ]
        )
        for row in rows:
            ref, best = row.vs_reference, row.vs_best_other
            writer.writerow(
                [
                    row.method,
                    row.metric_name,
                    len(row.finals),
                    " ".join(f"{s}:{v!r}" for s, v in sorted(row.finals.items())),
                    row.mean,
                    row.std,
                    *(("", "", "") if ref is None else (ref.mean, ref.low, ref.high)),
                    row.best_other if best else "",
                    *(("", "", "") if best is None else (best.mean, best.low, best.high)),
                    row.loss,
                    row.upload_mbit,
                    row.seconds_round,
                    " ".join(row.folders),
                ]
            )
    return md, path


def plot_curves(cells: Sequence[CellResult], order: Sequence[str], path: str | Path) -> Path:
    """``curves.png``: the task metric per round, one line per method (mean over seeds) with a band
    from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in order:
        group = [c for c in cells if c.method == name]
        if not group:
            continue
        length = min(len(c.curve) for c in group)
        curves = np.array([c.curve[:length] for c in group])
        rounds = np.arange(length)
        (line,) = ax.plot(rounds, curves.mean(axis=0), label=name, linestyle="--" if name in _CONTROLS else "-")
        ax.fill_between(rounds, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("round")
    ax.set_ylabel(cells[0].metric_name if cells else "metric")
    ax.set_title("Task metric per round (line: mean over seeds; band: lowest to highest seed)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


_CONTROLS = {name for name, method in METHODS.items() if method.kind == "control"}


def plot_tradeoff(rows: Sequence[TableRow], path: str | Path) -> Path:
    """``tradeoff.png``: final metric (mean, error bar = std over seeds) against upload Mbit per
    client per round, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        ax.errorbar(row.upload_mbit, row.mean, yerr=row.std, fmt="o", capsize=3)
        ax.annotate(row.method, (row.upload_mbit, row.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("upload Mbit per client per round")
    ax.set_ylabel(f"final {rows[0].metric_name}" if rows else "final metric")
    ax.set_title("Accuracy against communication (error bar: std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
