"""What a finished ``f3ocus-compare`` grid says beyond its table: the gates, the kinds of client and
the coverage (docs/results.md, "The shifted setting").

Reads the cells of ``RESULTS/NAME/cells`` and prints:

* **gates**: per seed the final accuracy of ``heads-only``, ``all-layers`` and every ``fixed-*`` row
  present, ``all-layers - heads-only`` and the best minus the worst fixed row of that seed, then the
  pair best and worst on the mean and their difference seed by seed (issue 18 asks for >= 0.05 and
  >= 0.03 on every seed);
* **kinds**: per method the final accuracy of each kind of client, mean over clients and seeds, and
  round 0 (the base with a fresh head); a kind is the clients with the same ``data.shift`` and
  ``data.questions`` in the grid's ``grid.json`` (in the default shifted setting: plain 0, 4; inverted
  images 1, 5; negated questions 2, 6; both 3, 7);
* **coverage**: per method, mean over rounds and seeds, the layers trained by at least one client, the
  own top-b layers each client missed and the share of its own best importance it kept
  (``coverage_diagnostics`` of ``metrics.jsonl``).

    PYTHONPATH=. python benchmarks/grid_report.py --results results --name default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from f3ocus_core.per_client import split_values, values_for
from f3ocus_evidence.results import cell_result, read_rows


def kinds_of(grid: dict) -> dict[str, tuple[int, ...]]:
    """The grid's kinds of client (``grid.json``): partition ids grouped by their ``data.shift`` and
    ``data.questions`` (by the run config's one-or-one-per-client rule), named ``shift/questions``."""
    config, clients = grid["base_run_config"], int(grid["clients"])
    shifts = values_for(split_values(config.get("data.shift", "none"), "data.shift"), clients, "data.shift")
    questions = values_for(
        split_values(config.get("data.questions", "all"), "data.questions"), clients, "data.questions"
    )
    found: dict[str, tuple[int, ...]] = {}
    for client, kind in enumerate(f"{shift}/{asked}" for shift, asked in zip(shifts, questions)):
        found[kind] = (*found.get(kind, ()), client)
    return found


def cells_of(folder: Path) -> dict[str, dict[int, Path]]:
    """method -> seed -> cell folder, for every cell with a finished round."""
    found: dict[str, dict[int, Path]] = {}
    for cell in sorted(folder.glob("*-seed*")):
        method, _, seed = cell.name.rpartition("-seed")
        if seed.isdigit() and any(row["round"] > 0 for row in read_rows(cell)):
            found.setdefault(method, {})[int(seed)] = cell
    return found


def gates(cells: dict[str, dict[int, Path]]) -> None:
    """Per seed: heads-only, all-layers, the fixed rows and the two gate differences."""
    fixed = sorted(m for m in cells if m.startswith("fixed-"))
    shown = [m for m in ("heads-only", "all-layers") if m in cells] + fixed
    seeds = sorted(set.intersection(*(set(cells[m]) for m in shown))) if shown else []
    if not seeds:
        print("gates: no seed with every one of heads-only, all-layers and fixed-* rows")
        return
    final = {m: {s: cell_result(m, s, cells[m][s]).final for s in seeds} for m in shown}
    print("seed " + " ".join(f"{m:>11}" for m in shown) + "  all-heads  best-worst fixed")
    for s in seeds:
        line = f"{s:4d} " + " ".join(f"{final[m][s]:11.4f}" for m in shown)
        if "heads-only" in final and "all-layers" in final:
            line += f"  {final['all-layers'][s] - final['heads-only'][s]:+.4f}"
        if fixed:
            best, worst = max(fixed, key=lambda m: final[m][s]), min(fixed, key=lambda m: final[m][s])
            line += f"  {final[best][s] - final[worst][s]:+.4f} ({best} / {worst})"
        print(line)
    print("mean " + " ".join(f"{np.mean(list(final[m].values())):11.4f}" for m in shown))
    if len(fixed) > 1:
        means = {m: np.mean(list(final[m].values())) for m in fixed}
        best, worst = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
        diffs = ", ".join(f"{final[best][s] - final[worst][s]:+.4f}" for s in seeds)
        print(f"best fixed row on the mean {best}, worst {worst}: per seed {diffs}")


def kinds(cells: dict[str, dict[int, Path]], groups: dict[str, tuple[int, ...]]) -> None:
    """Per method, the final accuracy of each kind of client in ``groups`` (and round 0 of the first
    cell)."""
    width = max(10, *(len(kind) + 1 for kind in groups))
    print(f"{'method':16s}" + "".join(f"{kind:>{width}s}" for kind in groups))
    first: list[dict] = []
    for method, seeds in cells.items():
        values: dict[str, list[float]] = {kind: [] for kind in groups}
        for cell in seeds.values():
            rows = sorted(read_rows(cell), key=lambda row: row["round"])
            first = first or rows
            per_client = rows[-1]["accuracy_per_client"]
            for kind, ids in groups.items():
                values[kind] += [per_client[name] for name in per_client if int(name.rpartition("/")[2]) in ids]
        print(f"{method:16s}" + "".join(f"{np.mean(v) if v else float('nan'):{width}.4f}" for v in values.values()))
    if first:
        start = first[0]["accuracy_per_client"]
        print(
            f"{'round 0':16s}"
            + "".join(
                f"{np.mean([v for n, v in start.items() if int(n.rpartition('/')[2]) in ids]):{width}.4f}"
                for ids in groups.values()
            )
        )


def coverage(cells: dict[str, dict[int, Path]]) -> None:
    """Per method: layers trained by >= 1 client, own top-b layers missed, own importance kept."""
    for method, seeds in cells.items():
        trained, missed, kept = [], [], []
        for cell in seeds.values():
            for row in read_rows(cell):
                diagnostics = row.get("coverage_diagnostics")
                if row["round"] == 0 or not diagnostics:
                    continue
                trained.append(diagnostics["layers_trained"])
                missed.append(np.mean(list(diagnostics["missed_top_b"].values()) or [0]))
                kept.append(np.mean(list(diagnostics["importance_share"].values()) or [1]))
        if trained:
            print(
                f"{method:16s} layers trained {np.mean(trained):.2f}, own top-b missed per client "
                f"{np.mean(missed):.2f}, own importance kept {np.mean(kept):.3f}"
            )


def main() -> None:
    """Print the three reports of one grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="the folder holding the grids")
    parser.add_argument("--name", default="default", help="the grid's name")
    args = parser.parse_args()
    folder = Path(args.results) / args.name
    cells = cells_of(folder / "cells")
    if not cells:
        raise SystemExit(f"No finished cell under {folder / 'cells'}.")
    print("## gates")
    gates(cells)
    print("\n## kinds of client (final accuracy)")
    kinds(cells, kinds_of(json.loads((folder / "grid.json").read_text())))
    print("\n## coverage (mean over rounds and seeds)")
    coverage(cells)


if __name__ == "__main__":
    main()
