"""Flower ServerApp: parse the run config, load the model, run the F3OCUS strategy, save outputs."""

from __future__ import annotations

import json
import logging
import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from f3ocus_core.checkpoint import Checkpoint, check_fingerprint, config_fingerprint, load_checkpoint, restore_rng
from f3ocus_core.config import ConfigError, check_against_model, parse_run_config
from f3ocus_core.peft_units import get_state, save_adapter, set_state
from f3ocus_core.recorder import RunRecorder
from f3ocus_core.tracking import final_artifacts, open_tracking, require_installed, run_params, tracked
from f3ocus_flower.model_setup import model_path, set_up_model
from f3ocus_flower.protocol import record_to_state, state_to_record
from server_app.grid import prompt
from server_app.strategy import F3ocusStrategy

app = ServerApp()

# Progress of long steps inside f3ocus_core (the base checkpoint build) goes to Flower's log stream.
_core_log = logging.getLogger("f3ocus_core")
_core_log.setLevel(INFO)
for _handler in logging.getLogger("flwr").handlers:
    if _handler not in _core_log.handlers:
        _core_log.addHandler(_handler)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run F3OCUS for ``num-server-rounds`` rounds and write everything to ``output-dir/run-name``;
    with ``resume``, continue the run in that folder after its last complete round."""
    checkpoint: Checkpoint | None = None
    try:
        settings = parse_run_config(context.run_config)
        require_installed(settings.tracking.trackers)
        log(INFO, "Loading model %s", settings.model.name)
        setup = set_up_model(model_path(settings), settings.peft, settings.seed)
        check_against_model(settings, len(setup.layer_map))
        model, units, layers = setup.model, setup.units, list(setup.layer_map.names)
        fingerprint = config_fingerprint(dict(context.run_config), layers, [list(n) for n in units.names])
        if settings.resume:
            out_dir = Path(settings.resume).resolve()
            checkpoint = load_checkpoint(out_dir)
            check_fingerprint(checkpoint.fingerprint, fingerprint, out_dir)
    except (ConfigError, ValueError) as error:
        log(ERROR, "The run was stopped before training: %s", error)
        raise

    if checkpoint is None:
        run_name = settings.run_name or (
            time.strftime("%Y%m%d-%H%M%S") + f"-{settings.data.task}-{settings.selection.algorithm}"
        )
        out_dir = Path(settings.output_dir).resolve() / run_name
    recorder = RunRecorder(out_dir, layers)
    run_record = {
        "settings": settings.as_dict(),
        "model_path": setup.path,
        "layers": layers,
        "units": [list(n) for n in units.names],
        "run_config": dict(context.run_config),
    }
    if checkpoint is None:
        recorder.write_json("config.json", run_record)
    else:
        original = json.loads((out_dir / "config.json").read_text())
        original.setdefault("resumed", []).append({"after_round": checkpoint.server_round, **run_record})
        recorder.write_json("config.json", original)
    log(INFO, "Outputs go to %s", out_dir)

    strategy = F3ocusStrategy(settings, units, recorder, fingerprint)
    initial = state_to_record(get_state(model, units.all_keys()))
    if checkpoint is not None:
        log(INFO, "Resuming %s after round %d", out_dir, checkpoint.server_round)
        strategy.import_state(checkpoint)
        restore_rng(checkpoint.rng, checkpoint.torch_rng)
        initial = state_to_record(checkpoint.units)
    tracking = open_tracking(
        settings.tracking,
        out_dir,
        out_dir.name,
        run_params(context.run_config, {"model_path": setup.path}),
        resumed_round=None if checkpoint is None else checkpoint.server_round,
    )
    recorder.listeners.append(tracking.log_round)
    with tracked(tracking):
        result = strategy.start(prompt(grid), initial, settings.num_rounds, timeout=settings.round_timeout)
        set_state(model, record_to_state(result.arrays) if len(result.arrays) else strategy.state.global_units)
        save_adapter(model, out_dir / ("model" if settings.peft.method == "full" else "adapter"), settings.peft, units)
        tracking.log_artifacts(final_artifacts(out_dir))
    first, last = recorder.rows[0], recorder.rows[-1]
    shown = [("-" if row["metric"] is None else f"{row['metric']:.4f}") for row in (first, last)]
    log(
        INFO,
        "F3OCUS finished: %s %s at round %d -> %s at round %d. Outputs: %s%s",
        last["metric_name"] or first["metric_name"],
        shown[0],
        first["round"],
        shown[1],
        last["round"],
        out_dir,
        f". The run {strategy.stopped}" if strategy.stopped else "",
    )
