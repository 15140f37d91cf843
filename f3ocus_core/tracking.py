"""Experiment trackers: a run's rounds in MLflow and TensorBoard as they end, for watching a long run
and comparing runs side by side where researchers already look.

The trackers are fed with the recorder's ``metrics.jsonl`` row (:func:`round_scalars` flattens it),
so a tracker shows exactly what ``metrics.jsonl`` holds: every number of the row, one series per
client for the per-client values, with the round as the step. Beside the numbers: the assignment
heatmap and the round's Pareto front as images, the run config as parameters, and at the end the
final adapter, ``config.json`` and ``metrics.jsonl`` as MLflow artifacts. Nothing a client holds
(images, questions, answers, label sets, its personal head) is ever logged: the row carries only
what the server already measured. docs/tracking.md is the user's side of this.

Run-config keys (parsed here into :class:`TrackingSettings`): ``tracking.to`` (``''``, ``mlflow``,
``tensorboard`` or ``mlflow,tensorboard``), ``tracking.uri`` and ``tracking.experiment``. The
trackers are optional (``pip install 'f3ocus-flower[tracking]'``); :func:`require_installed` stops a
run that asks for a missing one before round 0. No flwr import here; mlflow and tensorboard are
imported only when a tracker is opened.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from f3ocus_core.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TRACKERS = ("mlflow", "tensorboard")
"""The trackers ``tracking.to`` may name."""

INSTALL = "pip install 'f3ocus-flower[tracking]'  (from a checkout: pip install -e '.[tracking]')"
"""What a user runs to get both trackers."""

_IMPORTS = {"mlflow": ("mlflow",), "tensorboard": ("tensorboard", "torch.utils.tensorboard")}
_STATE_FILE = "tracking.json"
_MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch call (100 for params)


@dataclass
class TrackingSettings:
    """``tracking.*``: where a run's rounds are logged besides its own folder.

    ``uri``: empty, the run's folder (``tensorboard/``, ``mlflow.db`` and ``mlartifacts/`` in it); a
    folder, shared by many runs (``<uri>/tensorboard/<run-name>/``, ``<uri>/mlflow.db``); an address
    with a scheme (``http://mlflow.hospital.org:5000``, ``sqlite:///...``), MLflow's tracking URI as
    it is (TensorBoard then writes to the run's folder).
    """

    trackers: tuple[str, ...] = ()
    uri: str = ""
    experiment: str = "f3ocus"


def parse_trackers(value: str) -> tuple[str, ...]:
    """``"mlflow, tensorboard"`` -> ``("mlflow", "tensorboard")``; ``""`` -> ``()``. Raises
    :class:`ConfigError` naming ``tracking.to`` for an unknown name."""
    names = [part.strip().lower() for part in str(value).split(",") if part.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"tracking.to: unknown tracker {unknown[0]!r}{did_you_mean(unknown[0], TRACKERS)}; choose "
            f"'' (off), one of {list(TRACKERS)} or several, comma-separated ({','.join(TRACKERS)!r})."
        )
    return tuple(name for name in TRACKERS if name in names)


def is_address(uri: str) -> bool:
    """Whether ``tracking.uri`` is an address with a scheme (for MLflow) rather than a folder."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri)) or uri == "databricks"


def check_settings(settings: TrackingSettings) -> None:
    """Checks of the ``tracking.*`` values that need no tracker installed."""
    if settings.uri and is_address(settings.uri) and settings.trackers == ("tensorboard",):
        raise ConfigError(
            f"tracking.uri: {settings.uri!r} is an address, but TensorBoard writes event files; "
            "give a folder, or leave tracking.uri empty for the run's folder."
        )
    if settings.trackers and not settings.experiment.strip():
        raise ConfigError("tracking.experiment: empty; give the MLflow experiment name, e.g. 'f3ocus'.")


def require_installed(trackers: tuple[str, ...]) -> None:
    """Import each asked-for tracker; a missing one raises :class:`ConfigError` with the install command."""
    for name in trackers:
        for module in _IMPORTS[name]:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ConfigError(
                    f"tracking.to: {name!r} is asked for but not installed ({error}). Install the trackers with "
                    f"{INSTALL}, or set tracking.to='' to run without one."
                ) from None


def _key(name: str) -> str:
    """A series name MLflow accepts (letters, digits, ``_ - . / : space``); others become ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name)


def round_scalars(row: Mapping) -> dict[str, float]:
    """Every number of a ``metrics.jsonl`` row, flattened into named series.

    A top-level number keeps its key (``metric``, ``accuracy``, ``loss``, ``train_loss``,
    ``mbit_train_per_client``, ``seconds_*``, ``clients_evaluated``, and any number a later version
    adds, such as a DP epsilon); a mapping becomes one series per entry, its path joined by ``/``
    (``metric_per_client/<client>``, ``bytes_up/<client>``, ``bytes_down/train/<client>``; a ``/`` in
    a client's name becomes ``_``, as MLflow and TensorBoard group series by ``/``).
    Left out: ``round`` (the step), strings, ``None`` and lists (``assignment``, ``coverage``,
    ``failed``; the assignment is logged as an image).
    """
    scalars: dict[str, float] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, Mapping):
            for name, inner in value.items():
                name = str(name).replace("/", "_")  # one level per "/": the trackers group series by it
                walk(f"{prefix}/{name}" if prefix else name, inner)
        elif isinstance(value, int | float):  # bool too (an int)
            scalars[_key(prefix)] = float(value)

    walk("", {key: value for key, value in row.items() if key != "round"})
    return scalars


def round_images(out_dir: str | Path, server_round: int) -> dict[str, Path]:
    """The figures of round ``server_round`` the recorder has drawn in ``out_dir``: the assignment
    heatmap (all rounds so far) and the round's Pareto front (absent for round 0, and for a round
    whose selector drew no front)."""
    out = Path(out_dir)
    if server_round < 1:
        return {}
    images = {"assignments": out / "assignments.png", "pareto_front": out / "fronts" / f"round_{server_round:03d}.png"}
    return {name: path for name, path in images.items() if path.exists()}


def run_params(run_config: Mapping[str, object], extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """The run config (and ``extra`` entries such as the model path) as MLflow parameters (strings)."""
    params = {str(key): value for key, value in run_config.items()}
    params.update(extra or {})
    return {
        _key(key): (json.dumps(value) if isinstance(value, bool) else str(value))[:6000]
        for key, value in sorted(params.items())
    }


def _image_array(path: Path) -> np.ndarray:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class TensorBoardTracker:
    """Event files for ``tensorboard --logdir``: scalars and images per round, the run config as text.

    ``purge_step``: on resuming after round r, r + 1, so that TensorBoard drops what an interrupted
    round had logged before it is logged again.
    """

    name = "tensorboard"

    def __init__(self, logdir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)

    def log_params(self, params: Mapping[str, str]) -> None:
        table = "| key | value |\n|---|---|\n" + "".join(f"| {k} | `{v}` |\n" for k, v in params.items())
        self.writer.add_text("run_config", table, 0)

    def log_round(self, step: int, scalars: Mapping[str, float], images: Mapping[str, Path]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        for key, path in images.items():
            self.writer.add_image(key, _image_array(path), step, dataformats="HWC")
        self.writer.flush()

    def log_artifacts(self, paths: Mapping[str, Path]) -> None:
        """TensorBoard keeps no files: nothing to do (the run's folder has them)."""

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run (through :class:`mlflow.MlflowClient`, no global active run, so runs in one
    process stay apart): metrics per round, images with their step, parameters, artifacts.

    Parameters
    ----------
    uri : str
        MLflow's tracking URI.
    experiment : str
        The experiment (created if missing, its artifacts under ``artifact_root`` when given).
    run_name : str
        The run's name in the UI.
    tags : Mapping[str, str]
        Tags of a new run.
    run_id : str | None
        An existing run to continue (a resumed run), else a new run is created.
    """

    name = "mlflow"

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        artifact_root: str | None = None,
        run_id: str | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(experiment, artifact_location=artifact_root)
        )
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            self.run_id = self.client.create_run(
                self.experiment_id, run_name=run_name, tags=dict(tags or {})
            ).info.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_round(self, step: int, scalars: Mapping[str, float], images: Mapping[str, Path]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + _MLFLOW_BATCH])
        for key, path in images.items():
            self.client.log_image(self.run_id, _image_array(path), key=key, step=step)

    def log_artifacts(self, paths: Mapping[str, Path]) -> None:
        for name, path in paths.items():
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=name)
            elif path.exists():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class RunTracking:
    """The trackers of one run. A tracker that fails while the run goes (a server gone away) is
    logged as a warning and the run goes on: ``metrics.jsonl`` keeps every round either way."""

    def __init__(self, trackers: list, out_dir: Path) -> None:
        self.trackers = trackers
        self.out_dir = out_dir

    def _each(self, what: str, call: Callable[[Any], object]) -> None:
        for tracker in self.trackers:
            try:
                call(tracker)
            except Exception as error:  # a tracker must never stop the federated run
                log.warning(
                    "tracking: %s could not log %s (%s: %s); the run goes on, %s has everything.",
                    tracker.name,
                    what,
                    type(error).__name__,
                    error,
                    self.out_dir / "metrics.jsonl",
                )

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log the run's parameters."""
        self._each("the run config", lambda tracker: tracker.log_params(params))

    def log_round(self, row: Mapping, images: Mapping[str, Path] | None = None) -> None:
        """Log one ``metrics.jsonl`` row (its numbers, :func:`round_scalars`) and its figures
        (default: :func:`round_images` of the run's folder) at step ``row["round"]``."""
        step = int(row["round"])
        scalars = round_scalars(row)
        figures = round_images(self.out_dir, step) if images is None else images
        self._each(f"round {step}", lambda tracker: tracker.log_round(step, scalars, figures))

    def log_artifacts(self, paths: Mapping[str, Path]) -> None:
        """Keep files or folders with the run (MLflow artifacts; TensorBoard ignores them)."""
        self._each("the artifacts", lambda tracker: tracker.log_artifacts(paths))

    def close(self, status: str = "FINISHED") -> None:
        """End the run as ``FINISHED`` or ``FAILED``."""
        self._each("the end of the run", lambda tracker: tracker.close(status))


def _locations(settings: TrackingSettings, out_dir: Path, run_name: str) -> tuple[Path, str, str | None]:
    """TensorBoard's log folder, MLflow's tracking URI and the artifact root of a new experiment."""
    if settings.uri and is_address(settings.uri):
        return out_dir / "tensorboard", settings.uri, None
    if settings.uri:
        base = Path(settings.uri).expanduser().resolve()
        logdir = base / "tensorboard" / run_name
    else:
        base = out_dir
        logdir = out_dir / "tensorboard"
    base.mkdir(parents=True, exist_ok=True)
    return logdir, f"sqlite:///{base / 'mlflow.db'}", (base / "mlartifacts").as_uri()


def open_tracking(
    settings: TrackingSettings,
    out_dir: str | Path,
    run_name: str,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    resumed_round: int | None = None,
) -> RunTracking:
    """Open the asked-for trackers for the run in ``out_dir`` and log its ``params``.

    ``resumed_round``: the run continues after that round; MLflow then continues the run it had
    (its id is kept in ``out_dir/tracking.json``) and TensorBoard drops later steps. A tracker that
    cannot be opened (a server that does not answer, a URI MLflow does not know) raises
    :class:`ConfigError` naming ``tracking.uri``, so the run stops before round 0.
    """
    out = Path(out_dir)
    if not settings.trackers:
        return RunTracking([], out)
    require_installed(settings.trackers)
    logdir, mlflow_uri, artifact_root = _locations(settings, out, run_name)
    state_path = out / _STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    trackers: list = []
    try:
        if "tensorboard" in settings.trackers:
            trackers.append(TensorBoardTracker(logdir, None if resumed_round is None else resumed_round + 1))
        if "mlflow" in settings.trackers:
            previous = state.get("mlflow", {})
            run_id = previous.get("run_id") if resumed_round is not None and previous.get("uri") == mlflow_uri else None
            tracker = MlflowTracker(mlflow_uri, settings.experiment, run_name, tags, artifact_root, run_id)
            trackers.append(tracker)
            state["mlflow"] = {"uri": mlflow_uri, "experiment_id": tracker.experiment_id, "run_id": tracker.run_id}
            if run_id is not None:
                params = None  # MLflow parameters cannot change; the run logged them when it started
    except Exception as error:
        for tracker in trackers:
            tracker.close("FAILED")
        raise ConfigError(
            f"tracking.uri: could not open {settings.trackers} at "
            f"{settings.uri or out} ({type(error).__name__}: {error})."
        ) from error
    if "tensorboard" in settings.trackers:
        state["tensorboard"] = {"logdir": str(logdir)}
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    tracking = RunTracking(trackers, out)
    if params:
        tracking.log_params(params)
    return tracking


@contextmanager
def tracked(tracking: RunTracking) -> Iterator[RunTracking]:
    """Close ``tracking``'s runs when the block ends: ``FINISHED``, or ``FAILED`` if it raised."""
    try:
        yield tracking
    except BaseException:
        tracking.close("FAILED")
        raise
    tracking.close("FINISHED")


def content_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes (a finished run's ``metrics.jsonl``: the same rows, the same digest)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def replay_run(
    settings: TrackingSettings, folder: str | Path, run_name: str, tags: Mapping[str, str], rows: Sequence[Mapping]
) -> bool:
    """Log a finished run from its folder (``config.json``, ``metrics.jsonl`` rows, figures, adapter)
    as one tracker run, for runs that did not log while they went (a comparison grid's cells).

    An MLflow run of this experiment tagged with the same ``f3ocus.cell`` and ``metrics.jsonl``
    digest is already this run: nothing is logged again and False is returned. TensorBoard's folder
    (``<uri>/tensorboard/<run_name>``) is rewritten.
    """
    folder = Path(folder)
    digest = content_digest(folder / "metrics.jsonl")
    tags = {**tags, "f3ocus.cell": run_name, "f3ocus.metrics_sha1": digest}
    trackers = settings.trackers
    if "mlflow" in trackers and _already_logged(settings, folder, run_name, tags):
        trackers = tuple(name for name in trackers if name != "mlflow")
        if not trackers:
            return False
    if "tensorboard" in trackers:
        logdir, _, _ = _locations(settings, folder, run_name)
        shutil.rmtree(logdir, ignore_errors=True)
    record = json.loads((folder / "config.json").read_text())
    params = run_params(record.get("run_config", {}), {"model_path": record.get("model_path", "")})
    replay = TrackingSettings(trackers, settings.uri, settings.experiment)
    tracking = open_tracking(replay, folder, run_name, params=params, tags=tags)
    with tracked(tracking):
        last = max(int(row["round"]) for row in rows)
        for row in sorted(rows, key=lambda row: row["round"]):
            images = round_images(folder, int(row["round"]))
            if int(row["round"]) != last:  # assignments.png holds every round: log it once, at the end
                images.pop("assignments", None)
            tracking.log_round(row, images)
        tracking.log_artifacts(final_artifacts(folder))
    return True


def _already_logged(settings: TrackingSettings, folder: Path, run_name: str, tags: Mapping[str, str]) -> bool:
    from mlflow import MlflowClient

    _, uri, _ = _locations(settings, folder, run_name)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return False
    query = " and ".join(f"tags.`{key}` = '{tags[key]}'" for key in ("f3ocus.cell", "f3ocus.metrics_sha1"))
    return bool(client.search_runs([experiment.experiment_id], query, max_results=1))


def final_artifacts(out_dir: str | Path) -> dict[str, Path]:
    """What a finished run keeps in MLflow: the final adapter (``model/`` for ``peft.method=full``),
    ``config.json`` and ``metrics.jsonl``."""
    out = Path(out_dir)
    paths = {
        "adapter": out / "adapter",
        "model": out / "model",
        "config.json": out / "config.json",
        "metrics.jsonl": out / "metrics.jsonl",
    }
    return {name: path for name, path in paths.items() if path.exists()}


class GridTracking:
    """A comparison grid in the trackers (``f3ocus-compare --tracking``): every finished cell is one
    run of the experiment, with its method and seed as tags, nested in MLflow under one run of the
    grid that holds the grid's table and figures as artifacts; in TensorBoard one folder per cell
    under ``<uri>/tensorboard/`` and the table as text in ``<uri>/tensorboard/_grid``.

    Parameters
    ----------
    settings : TrackingSettings
        Trackers, ``uri`` (a folder or an MLflow address; never empty here) and experiment.
    name : str
        The grid's name (tag ``f3ocus.grid``).
    folder : Path
        The grid's output folder (TensorBoard's, when ``uri`` is an MLflow address).
    """

    def __init__(self, settings: TrackingSettings, name: str, folder: Path) -> None:
        require_installed(settings.trackers)
        check_settings(settings)
        self.settings = settings
        self.name = name
        self.folder = folder
        self.parent: str | None = None
        if "mlflow" in settings.trackers:
            self.parent = self._grid_run()

    def _client(self) -> tuple[MlflowClient, str | None]:
        from mlflow import MlflowClient

        _, uri, artifact_root = _locations(self.settings, self.folder, self.name)
        return MlflowClient(tracking_uri=uri), artifact_root

    def _grid_run(self) -> str:
        client, artifact_root = self._client()
        found = client.get_experiment_by_name(self.settings.experiment)
        experiment = (
            found.experiment_id
            if found is not None
            else client.create_experiment(self.settings.experiment, artifact_location=artifact_root)
        )
        runs = client.search_runs(
            [experiment], f"tags.`f3ocus.grid` = '{self.name}' and tags.`f3ocus.kind` = 'grid'", max_results=1
        )
        if runs:
            return runs[0].info.run_id
        return client.create_run(
            experiment, run_name=f"grid {self.name}", tags={"f3ocus.grid": self.name, "f3ocus.kind": "grid"}
        ).info.run_id

    def log_cell(self, folder: str | Path, method: str, seed: int) -> bool:
        """Log one finished cell (unless MLflow has it already); True if anything was logged."""
        tags = {"method": method, "seed": str(seed), "f3ocus.grid": self.name, "f3ocus.kind": "cell"}
        if self.parent is not None:
            tags["mlflow.parentRunId"] = self.parent
        return replay_run(self.settings, folder, f"{method}-seed{seed}", tags, _read_rows(Path(folder)))

    def log_table(self, files: Mapping[str, Path]) -> None:
        """Keep the grid's table and figures with the grid's run (replacing an earlier call's)."""
        if self.parent is not None:
            client, _ = self._client()
            for path in files.values():
                client.log_artifact(self.parent, str(path))
            client.set_terminated(self.parent, status="FINISHED")
        if "tensorboard" in self.settings.trackers:
            from torch.utils.tensorboard import SummaryWriter

            logdir = _locations(self.settings, self.folder, "_grid")[0]
            with SummaryWriter(log_dir=str(logdir)) as writer:
                for name, path in files.items():
                    if path.suffix in (".md", ".csv", ".json"):
                        writer.add_text(name, path.read_text(), 0)


def _read_rows(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
