"""``f3ocus-compare``: the grid runs through the apps, resumes, and its table is what the cells measured;
the statistics; the two controls of the strategy."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MessageType

from f3ocus_core.config import parse_run_config
from f3ocus_evidence.compare import main
from f3ocus_evidence.results import (
    METHODS,
    PEFT_ROWS,
    CellResult,
    bootstrap_ci,
    build_table,
    is_method,
    method_named,
    paired_difference,
    read_rows,
    upload_mbit_per_client,
)
from f3ocus_flower.protocol import ARRAYS, CONFIG, LAYERS
from tests.inprocess_grid import run_server_app


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as f3ocus-compare uses: on a busy 2-core CPU two threads are many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bootstrap_ci_of_identical_values_is_that_value_and_of_two_values_spans_them():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    low, high = bootstrap_ci(list(np.random.default_rng(1).normal(2.0, 1.0, 400)))
    assert low < 2.0 < high and high - low < 0.5  # about 4 standard errors (1/sqrt(400) each)


def test_paired_difference_pairs_by_seed_and_ignores_unpaired_seeds():
    diff = paired_difference({0: 0.8, 1: 0.7, 2: 0.9}, {0: 0.6, 1: 0.6, 5: 0.1})
    assert diff.seeds == 2
    assert diff.mean == pytest.approx(0.15)
    assert (diff.low, diff.high) == pytest.approx((0.1, 0.2))
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def _cell(method, seed, final, upload=1.0):
    return CellResult(method, seed, f"/x/{method}-{seed}", "accuracy", [0.1, final], upload, 2.0)


def test_table_compares_with_lntk_alone_and_the_best_other_selector():
    cells = [
        _cell("f3ocus-nsga2", 0, 0.70),
        _cell("f3ocus-nsga2", 1, 0.80),
        _cell("lntk-alone", 0, 0.60),
        _cell("lntk-alone", 1, 0.75),
        _cell("fd", 0, 0.50),
        _cell("fd", 1, 0.52),
        _cell("last", 0, 0.65),
        _cell("last", 1, 0.66),
    ]
    rows = {row.method: row for row in build_table(cells, ["f3ocus-nsga2", "lntk-alone", "fd", "last"])}
    f3 = rows["f3ocus-nsga2"]
    assert f3.mean == pytest.approx(0.75) and f3.std == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert f3.vs_reference.mean == pytest.approx(0.075)
    assert f3.best_other == "last" and f3.vs_best_other.mean == pytest.approx(0.095)
    assert rows["last"].best_other == "fd"  # a selector is compared with the best of the others
    assert rows["lntk-alone"].vs_reference is None


def test_upload_counts_every_client_sent_a_train_message():
    row = {"bytes_down": {"train": {"a": 10, "b": 10}}, "bytes_up": {"a": 250_000}}
    assert upload_mbit_per_client(row) == pytest.approx(1.0)  # (2e6 bit + 0) / 2 clients


def _grid_args(tmp_path, model_cache):
    overrides = (
        f"model.cache-dir='{model_cache}' model.pretrain-steps=30 data.max-train-per-client=24 "
        "data.max-test-per-client=16 train.batch-size=8"
    )
    return [
        "--plain",
        "--methods",
        "f3ocus-nsga2,lntk-alone",
        "--seeds",
        "0,1",
        "--rounds",
        "1",
        "--clients",
        "2",
        "--output",
        str(tmp_path / "results"),
        "--name",
        "t",
        "--run-config",
        overrides,
    ]


def test_a_grid_runs_resumes_and_its_table_is_what_the_cells_measured(tmp_path, model_cache, capsys):
    args = _grid_args(tmp_path, model_cache)
    assert main(args) == 0
    out = tmp_path / "results" / "t"
    first = capsys.readouterr().out
    assert first.count("ran in") == 4, first
    for name in ("table.md", "table.csv", "curves.png", "tradeoff.png", "grid.json"):
        assert (out / name).stat().st_size > 0

    with (out / "table.csv").open() as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    finals = {}
    for method in ("f3ocus-nsga2", "lntk-alone"):
        finals[method] = {}
        for seed in (0, 1):
            folder = out / "cells" / f"{method}-seed{seed}"
            config = json.loads((folder / "config.json").read_text())["run_config"]
            assert config["seed"] == seed and config["num-server-rounds"] == 1
            rows = read_rows(folder)
            assert [row["round"] for row in rows] == [0, 1]
            finals[method][seed] = rows[-1]["metric"]
        values = list(finals[method].values())
        assert float(table[method]["mean"]) == pytest.approx(np.mean(values))
        assert float(table[method]["std"]) == pytest.approx(np.std(values, ddof=1))
    assert (
        json.loads((out / "cells/lntk-alone-seed0/config.json").read_text())["run_config"]["selection.algorithm"]
        == "local"
    )
    diffs = [finals["f3ocus-nsga2"][s] - finals["lntk-alone"][s] for s in (0, 1)]
    assert float(table["f3ocus-nsga2"]["diff_lntk_alone"]) == pytest.approx(np.mean(diffs))
    assert float(table["f3ocus-nsga2"]["diff_lntk_alone_low"]) == pytest.approx(min(diffs))
    assert "cells/lntk-alone-seed1" in (out / "table.md").read_text()

    kept = out / "cells" / "f3ocus-nsga2-seed0" / "metrics.jsonl"
    kept_mtime = kept.stat().st_mtime_ns
    deleted = out / "cells" / "lntk-alone-seed1"
    before = read_rows(deleted)[-1]["metric"]
    shutil.rmtree(deleted)
    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.count("ran in") == 1 and second.count("kept") == 3, second
    assert "lntk-alone seed 1" in [line for line in second.splitlines() if "ran in" in line][0]
    assert kept.stat().st_mtime_ns == kept_mtime
    assert read_rows(deleted)[-1]["metric"] == pytest.approx(before)  # same seed, same run


def _spy(seen, kind):
    def decorate(handler):
        def wrapped(msg, context):
            reply = handler(msg, context)
            seen.append((msg.metadata.dst_node_id, msg, reply))
            return reply

        return wrapped

    return {kind: decorate}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_row_is_a_valid_run_config(name, shipped_run_config):
    from f3ocus_core.importance import SCORERS
    from f3ocus_core.selection import ALGORITHMS

    settings = parse_run_config({**shipped_run_config, **METHODS[name].run_config(8)}, SCORERS, ALGORITHMS)
    if METHODS[name].kind == "peft":
        assert settings.peft.method == name.removeprefix("peft-") and settings.selection.budget == (8,)
    assert {f"peft-{mode}" for mode in PEFT_ROWS} <= set(METHODS)


def test_fixed_rows_are_named_by_their_layers_and_parse(shipped_run_config):
    method = method_named("fixed-0+2")
    settings = parse_run_config({**shipped_run_config, **method.run_config(4)})
    assert (settings.selection.algorithm, settings.selection.budget) == ("fixed", (2,))
    assert settings.selection.params == {"layers": (0, 2)}
    assert is_method("fixed-3") and not is_method("fixed-") and not is_method("fixed-0+x")
    with pytest.raises(KeyError):
        method_named("no-such-row")


def test_a_fixed_row_trains_its_layers_on_every_client(small_run_config):
    config = dict(small_run_config, **{"num-server-rounds": 1}, **method_named("fixed-1+2").run_config(4))
    _, rows = run_server_app(config, num_nodes=2)
    assert all(layers == [1, 2] for layers in rows[1]["assignment"].values())


def test_heads_only_assigns_no_layer_and_uploads_no_unit(small_run_config):
    config = dict(small_run_config, **{"num-server-rounds": 1, "control": "heads-only"})
    seen = []
    _, rows = run_server_app(config, num_nodes=2, wrap=_spy(seen, MessageType.TRAIN))
    assert all(layers == [] for layers in rows[1]["assignment"].values())
    assert all(list(msg.content[CONFIG][LAYERS]) == [] and len(reply.content[ARRAYS]) == 0 for _, msg, reply in seen)
    assert rows[1]["failed"] == [] and all(not reply.has_error() for _, _, reply in seen), (
        "every client trains its head (it holds the units of the last evaluate, which asked for no scores)"
    )


def test_local_only_evaluates_each_client_on_its_own_updates(small_run_config):
    config = dict(small_run_config, **{"num-server-rounds": 1, "control": "local-only"})
    trained, evaluated = [], []
    wrap = {**_spy(trained, MessageType.TRAIN), **_spy(evaluated, MessageType.EVALUATE)}
    run_server_app(config, num_nodes=2, wrap=wrap)
    round_one = {
        node: msg.content[ARRAYS] for node, msg, _ in evaluated if int(msg.content[CONFIG]["server-round"]) == 1
    }
    for node, _, reply in trained:
        update = reply.content[ARRAYS]
        assert len(update) > 0
        for key in update:  # what this client sent comes back to it unchanged: nothing was averaged
            np.testing.assert_array_equal(round_one[node][key].numpy(), update[key].numpy())
    a, b = (trained[0][2].content[ARRAYS], trained[1][2].content[ARRAYS])
    shared = set(a) & set(b)
    for key in shared:  # a layer both trained differs between their models
        assert not np.array_equal(round_one[trained[0][0]][key].numpy(), round_one[trained[1][0]][key].numpy())
    assert Path(config["output-dir"]).exists()
