"""``benchmarks/probe_layers.py``: local layer probes run on a tiny setting, one-stream and two-tower."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe_layers():
    spec = importlib.util.spec_from_file_location("probe_layers", ROOT / "benchmarks" / "probe_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layer_sets_are_heads_only_each_pair_or_single_and_all(probe_layers):
    sets = probe_layers.layer_sets(4, "auto")
    assert [label for label, _ in sets] == ["heads-only", "0+1", "0+2", "0+3", "1+2", "1+3", "2+3", "all-layers"]
    assert sets[0][1] == [] and sets[-1][1] == [0, 1, 2, 3]
    assert len(probe_layers.layer_sets(8, "auto")) == 2 + 28
    assert [label for label, _ in probe_layers.layer_sets(9, "auto")][1:4] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="--sets"):
        probe_layers.layer_sets(4, "triples")


def test_the_table_marks_each_clients_best_fixed_set(probe_layers):
    cells = [
        {"client": client, "set": label, "seed": seed, "metric": value + 0.01 * seed}
        for client, values in (("a", (0.5, 0.7, 0.6, 0.9)), ("b", (0.4, 0.5, 0.8, 0.9)))
        for label, value in zip(("heads-only", "0", "1", "all-layers"), values)
        for seed in (0, 1)
    ]
    result = {"layer_names": ["layer.0", "layer.1"], "sets": ["heads-only", "0", "1", "all-layers"], "cells": cells}
    summary = probe_layers.summarise(result)
    assert summary["a"]["best"] == "0" and summary["b"]["best"] == "1"
    assert summary["a"]["best_minus_worst"] == pytest.approx(0.1)
    assert summary["b"]["all_minus_heads"] == pytest.approx(0.5)
    assert summary["a"]["best_minus_worst_per_seed"] == pytest.approx([0.1, 0.1])
    text = probe_layers.table(result)
    assert "0.705±0.007*" in text and "0.805±0.007*" in text
    assert "beats their worst on every seed: 2 of 2 {'a': '0', 'b': '1'}; their best sets differ: yes" in text


def test_the_probe_runs_on_vilt_with_shifted_clients(probe_layers, model_cache, tmp_path, capsys):
    out = tmp_path / "cells.json"
    result = probe_layers.main(
        [
            "--cache-dir",
            str(model_cache),
            "--pretrain-steps",
            "30",
            "--clients",
            "2",
            "--shift",
            "none,invert",
            "--seeds",
            "0,1",
            "--sets",
            "singles",
            "--max-train",
            "16",
            "--max-test",
            "8",
            "--epochs",
            "1",
            "--json",
            str(out),
        ]
    )
    assert result["layer_names"] == ["layer.0", "layer.1", "layer.2", "layer.3"]
    assert len(result["cells"]) == 2 * 6 * 2
    assert all(0.0 <= cell["metric"] <= 1.0 for cell in result["cells"])
    printed = capsys.readouterr().out
    assert "easy-vqa/0" in printed and "easy-vqa/1" in printed and printed.count("*") == 2
    assert probe_layers.main(["--table-of", str(out)])["cells"] == result["cells"]
    assert capsys.readouterr().out.count("*") == 2


def test_the_probe_runs_on_a_two_tower_family(probe_layers, tmp_path):
    result = probe_layers.main(
        [
            "--model",
            "builtin:tiny-llava-easyvqa",
            "--cache-dir",
            str(tmp_path),
            "--pretrain-steps",
            "2",
            "--clients",
            "1",
            "--shift",
            "grey",
            "--seeds",
            "0",
            "--sets",
            "singles",
            "--max-train",
            "8",
            "--max-test",
            "8",
            "--epochs",
            "1",
        ]
    )
    names = result["layer_names"]
    assert any(n.startswith("vision.") for n in names) and any(n.startswith("language.") for n in names)
    assert len(result["cells"]) == len(names) + 2
