"""benchmarks/grid_report.py: the gates, kinds of client and coverage read from a grid's cells."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.grid_report import cells_of, coverage, gates, kinds, kinds_of


def _cell(root: Path, method: str, seed: int, final: float, per_client: dict[int, float]) -> None:
    folder = root / f"{method}-seed{seed}"
    folder.mkdir(parents=True)
    base = {"metric_name": "accuracy", "bytes_up": {}, "bytes_down": {"train": {}}, "seconds_round": 1.0, "loss": 1.0}
    clients = {f"easy-vqa/{c}": v for c, v in per_client.items()}
    diagnostics = {"layers_trained": 2, "missed_top_b": {"easy-vqa/0": 1}, "importance_share": {"easy-vqa/0": 0.5}}
    rows = [
        {**base, "round": 0, "metric": 0.5, "accuracy_per_client": clients},
        {**base, "round": 1, "metric": final, "accuracy_per_client": clients, "coverage_diagnostics": diagnostics},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_gates_are_the_differences_seed_by_seed(tmp_path, capsys):
    finals = {
        "heads-only": (0.60, 0.62),
        "all-layers": (0.70, 0.61),
        "fixed-0+1": (0.66, 0.64),
        "fixed-2+3": (0.61, 0.63),
    }
    for method, values in finals.items():
        for seed, value in enumerate(values):
            _cell(tmp_path, method, seed, value, {0: 0.8, 1: 0.6, 4: 0.7})
    _cell(tmp_path, "unfinished", 0, 0.0, {})
    (tmp_path / "unfinished-seed0" / "metrics.jsonl").write_text("")
    cells = cells_of(tmp_path)
    assert set(cells) == set(finals)
    gates(cells)
    out = capsys.readouterr().out.splitlines()
    assert "+0.1000  +0.0500 (fixed-0+1 / fixed-2+3)" in out[1]
    assert "-0.0100  +0.0100 (fixed-0+1 / fixed-2+3)" in out[2]
    assert out[-1] == "best fixed row on the mean fixed-0+1, worst fixed-2+3: per seed +0.0500, +0.0100"
    grid = {"clients": 5, "base_run_config": {"data.shift": "none,invert,none,invert,none", "data.questions": "all"}}
    groups = kinds_of(grid)
    assert groups == {"none/all": (0, 2, 4), "invert/all": (1, 3)}
    kinds(cells, groups)
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["method", "none/all", "invert/all"]
    plain = next(line for line in table if line.startswith("heads-only")).split()
    assert plain[1:3] == ["0.7500", "0.6000"]  # none/all: clients 0 and 4 (2 holds no test); invert/all: client 1
    coverage(cells)
    assert "layers trained 2.00, own top-b missed per client 1.00, own importance kept 0.500" in capsys.readouterr().out
