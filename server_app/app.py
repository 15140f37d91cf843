"""Flower ServerApp: parse the run config, load the model, run the F3OCUS strategy, save outputs."""

from __future__ import annotations

import logging
import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from f3ocus_core.config import ConfigError, check_against_model, parse_run_config
from f3ocus_core.importance import SCORERS
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import load_vqa_model
from f3ocus_core.peft_units import attach_units, get_state, set_state, unit_map
from f3ocus_core.pretrain import resolve_model_path
from f3ocus_core.recorder import RunRecorder
from f3ocus_core.selection import ALGORITHMS
from server_app.strategy import F3ocusStrategy, from_record, to_record

app = ServerApp()

# Progress of long steps inside f3ocus_core (the base checkpoint build) goes to Flower's log stream.
_core_log = logging.getLogger("f3ocus_core")
_core_log.setLevel(INFO)
for _handler in logging.getLogger("flwr").handlers:
    if _handler not in _core_log.handlers:
        _core_log.addHandler(_handler)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run F3OCUS for ``num-server-rounds`` rounds and write everything to ``output-dir/run-name``."""
    try:
        settings = parse_run_config(context.run_config, SCORERS, ALGORITHMS)
        log(INFO, "Loading model %s", settings.model.name)
        path = resolve_model_path(settings.model.name, settings.model.cache_dir, settings.model.pretrain_steps, settings.seed)
        model, _ = load_vqa_model(path)
        layer_map = layer_map_for(model)
        check_against_model(settings, len(layer_map))
        model = attach_units(model, layer_map, settings.peft)
        units = unit_map(model, layer_map, settings.peft.method)
    except (ConfigError, ValueError) as error:
        log(ERROR, "The run was stopped before training: %s", error)
        raise

    run_name = settings.run_name or time.strftime("%Y%m%d-%H%M%S") + f"-{settings.data.task}-{settings.selection.algorithm}"
    out_dir = Path(settings.output_dir).resolve() / run_name
    recorder = RunRecorder(out_dir, list(layer_map.names))
    recorder.write_json("config.json", {"settings": settings.as_dict(), "model_path": path,
                                        "layers": list(layer_map.names), "units": [list(n) for n in units.names],
                                        "run_config": dict(context.run_config)})
    log(INFO, "Outputs go to %s", out_dir)

    strategy = F3ocusStrategy(settings, units, recorder)
    result = strategy.start(grid, to_record(get_state(model, units.all_keys())), settings.num_rounds,
                            timeout=settings.round_timeout)

    set_state(model, from_record(result.arrays) if len(result.arrays) else strategy.global_state)
    target = out_dir / ("adapter" if settings.peft.method == "lora" else "model")
    model.save_pretrained(target)
    rows = recorder.rows
    log(INFO, "F3OCUS finished: score %.4f at round 0 -> %.4f at round %d. Outputs: %s",
        rows[0]["score"], rows[-1]["score"], rows[-1]["round"], out_dir)
