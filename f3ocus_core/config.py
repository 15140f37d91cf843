"""The run configuration: every key a user can set, parsed from Flower's flat run config into typed
settings and checked before any training.

Keys live in ``[tool.flwr.app.config]`` of ``pyproject.toml`` and can be overridden with
``flwr run . --run-config "key=value ..."``; ``docs/config.md`` lists them all. A bad value raises
:class:`ConfigError`, whose message starts with the key.

Everything that can be checked without the model is checked here, once, before the model is built:
every key that names a choice against the constant of the module that implements it (the scorers
of :mod:`f3ocus_core.importance`, the selectors of :mod:`f3ocus_core.selection`, the PEFT methods,
...), ``selection.params`` against the chosen selector's parameters, and ``selection.budget`` by the
one rule of :func:`f3ocus_core.selection.client_budgets`. :func:`check_against_model` adds the
checks that need the model's layer count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from f3ocus_core.aggregation import LORA_SCHEMES, ROBUST_SCHEMES
from f3ocus_core.data.tasks import DataSettings
from f3ocus_core.devices import PRECISIONS, check_device_name
from f3ocus_core.errors import ConfigError, did_you_mean
from f3ocus_core.importance import SCORERS
from f3ocus_core.importance.outputs import DEFAULT_PROJECTION_DIM, DEFAULT_REDUCTION, REDUCTIONS
from f3ocus_core.peft_units import PEFT_METHODS, PeftSettings
from f3ocus_core.per_client import split_values
from f3ocus_core.pretrain import BUILTIN_MODEL, BUILTIN_MODELS
from f3ocus_core.privacy import PrivacySettings
from f3ocus_core.selection import ALGORITHMS, PICK_RULES, client_budgets, parse_budget
from f3ocus_core.selection.api import selector_params
from f3ocus_core.tracking import TrackingSettings, check_settings, parse_trackers
from f3ocus_core.training import ANSWER_MODES, TrainSettings

_T = TypeVar("_T")
_Number = TypeVar("_Number", int, float)


@dataclass
class ModelSettings:
    """``model.*``: which model to fine-tune and where the built-in base checkpoint is cached."""

    name: str = "builtin:tiny-vilt-easyvqa"
    cache_dir: str = ""
    pretrain_steps: int = 3000
    pretrain_exclude: tuple[str, ...] = ()


@dataclass
class ScoringSettings:
    """``scoring.*``: the layer scorer clients run every round."""

    method: str = "lntk"
    batch_size: int = 8
    reduction: str = DEFAULT_REDUCTION
    projection_dim: int = DEFAULT_PROJECTION_DIM


@dataclass
class SelectionSettings:
    """``selection.*``: the server's layer assignment."""

    algorithm: str = "nsga2"
    budget: tuple[int, ...] = (2,)
    pick: str = "knee"
    exact_budget: bool = True
    params: dict[str, float | tuple[float, ...]] = field(default_factory=dict)

    def budgets_for(self, num_clients: int) -> list[int]:
        """One budget per client of ``num_clients``: the single value repeated, or the list as given
        (which must then have ``num_clients`` entries); see :func:`~f3ocus_core.selection.client_budgets`."""
        return client_budgets(self.budget, range(num_clients), num_partitions=num_clients)

    @property
    def budget_partitions(self) -> int | None:
        """How many partition ids a per-client budget list covers (ids ``0..n-1``); None for one
        number, which covers any."""
        return len(self.budget) if len(self.budget) > 1 else None


#: ``control`` values: the default (empty, F3OCUS as configured) and the two ablations of the
#: federated part used by comparisons (docs/config.md).
CONTROLS = ("", "heads-only", "local-only")


@dataclass
class RunSettings:
    """All settings of one run."""

    num_rounds: int = 3
    run_name: str = ""
    output_dir: str = "outputs"
    seed: int = 0
    min_clients: int = 2
    round_timeout: float = 3600.0
    model: ModelSettings = field(default_factory=ModelSettings)
    peft: PeftSettings = field(default_factory=PeftSettings)
    data: DataSettings = field(default_factory=DataSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval_batch_size: int = 64
    eval_answer_mode: str = "rank"
    aggregation_lora: str = "product"
    aggregation_max_update_norm: float = 2.0
    aggregation_max_client_share: float = 0.5
    aggregation_robust: str = ""
    device: str = "auto"
    resume: str = ""
    control: str = ""
    clients_per_round: int = 0
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    dp: PrivacySettings = field(default_factory=PrivacySettings)
    secagg: bool = False

    def as_dict(self) -> dict:
        """A JSON-ready view (written to the run's ``config.json``)."""
        return asdict(self)


def parse_pretrain_exclude(value: str) -> tuple[str, ...]:
    """``"negation"`` or ``"colour,negation"`` -> the sorted easy-vqa question families the built-in base
    leaves out of its pretraining (``""``: none); at least one family must stay."""
    from f3ocus_core.data.easy_vqa import FAMILIES

    names = tuple(sorted({part.strip().lower() for part in value.split(",") if part.strip()}))
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise ConfigError(
            f"model.pretrain-exclude: unknown question family {unknown}; choose from "
            f"{list(FAMILIES)}, comma-separated, or '' for none."
        )
    if len(names) == len(FAMILIES):
        raise ConfigError("model.pretrain-exclude: leaves no question to pretrain on; keep at least one family.")
    return names


def parse_selector_params(value: str, algorithm: str | None = None) -> dict[str, float | tuple[float, ...]]:
    """``"population=60,generations=80"`` -> ``{"population": 60, "generations": 80}``; a list of
    numbers is joined by ``+`` (``"layers=0+1"`` -> ``{"layers": (0, 1)}``).

    With ``algorithm``, the parameters are also checked against that selector's
    (:func:`f3ocus_core.selection.api.selector_params`): an unknown name (with the closest known
    one), a wrong type or a value out of range raises :class:`ConfigError` naming ``selection.params``.
    """
    params: dict[str, float | tuple[float, ...]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"selection.params: {item!r} is not key=value.")
        key = key.strip()
        if key in params:
            raise ConfigError(f"selection.params: {key!r} is given twice.")
        try:
            numbers = [float(part) for part in raw.split("+")]
        except ValueError:
            raise ConfigError(f"selection.params: value of {key!r} is not a number: {raw!r}.") from None
        values = [int(number) if number.is_integer() else number for number in numbers]
        params[key] = tuple(values) if len(values) > 1 else values[0]
    if algorithm is not None:
        try:
            selector_params(algorithm, params)
        except ValueError as error:
            raise ConfigError(f"selection.params: {error}") from None
    return params


class _Reader:
    """Typed access to the flat run config that names the key in every error."""

    def __init__(self, config: Mapping[str, object]) -> None:
        self.config = config
        self.keys: set[str] = set()

    def raw(self, key: str, default: object) -> object:
        """The value as given (or ``default``), unchecked; the key counts as known."""
        self.keys.add(key)
        return self.config.get(key, default)

    def get(self, key: str, kind: type[_T], default: _T) -> _T:
        value = self.raw(key, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}.")
        return value

    def positive(self, key: str, kind: type[_Number], default: _Number, allow_zero: bool = False) -> _Number:
        value = self.get(key, kind, default)
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}.")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(
                f"{key}: unknown value {value!r}{did_you_mean(value, choices)}; choose one of {list(choices)}."
            )
        return value


def parse_run_config(
    config: Mapping[str, object], scorers: tuple[str, ...] = SCORERS, selectors: tuple[str, ...] = ALGORITHMS
) -> RunSettings:
    """Build and check :class:`RunSettings` from a flat run config.

    Parameters
    ----------
    config : Mapping[str, object]
        ``context.run_config``: ``[tool.flwr.app.config]`` plus ``--run-config`` overrides.
    scorers, selectors : tuple[str, ...]
        The valid ``scoring.method`` and ``selection.algorithm`` names: by default every scorer of
        :data:`f3ocus_core.importance.SCORERS` and every selector of
        :data:`f3ocus_core.selection.ALGORITHMS`; a caller may narrow them, never widen them.
    """
    _check_narrowed("scoring.method", scorers, SCORERS)
    _check_narrowed("selection.algorithm", selectors, ALGORITHMS)
    unknown = sorted(set(config) - run_config_keys())
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: not a run-config key{did_you_mean(unknown[0], run_config_keys())}; "
            "docs/config.md lists them all."
        )
    settings = _read(_Reader(config), scorers, selectors)
    check_settings(settings.tracking)
    check_secagg(settings)
    check_privacy(settings)
    try:
        settings.device = check_device_name(settings.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not settings.peft.target_modules:
        raise ConfigError("peft.target-modules: give at least one module name, e.g. 'query,value'.")
    if not settings.model.name:
        raise ConfigError(f"model.name: empty; give a local folder, a hub id or {BUILTIN_MODEL}.")
    if settings.model.name.startswith("builtin:") and settings.model.name not in BUILTIN_MODELS:
        raise ConfigError(
            f"model.name: unknown built-in model {settings.model.name!r}"
            f"{did_you_mean(settings.model.name, BUILTIN_MODELS)}; the built-ins are "
            f"{sorted(BUILTIN_MODELS)}."
        )
    if settings.model.pretrain_exclude and not settings.model.name.startswith("builtin:"):
        raise ConfigError(
            f"model.pretrain-exclude: applies to the built-in bases only; {settings.model.name!r} "
            "is not one, so set model.pretrain-exclude='' or model.name='builtin:...'."
        )
    if settings.control == "local-only" and settings.resume:
        raise ConfigError(
            "control: 'local-only' keeps one model per client that checkpoints do not hold, "
            "so it cannot resume; start the run again, or set control=''."
        )
    if not math.isfinite(settings.aggregation_max_update_norm):
        raise ConfigError(
            f"aggregation.max-update-norm: a finite number >= 0 (0 = no bound), "
            f"got {settings.aggregation_max_update_norm}."
        )
    if not settings.aggregation_max_client_share <= 1.0:
        raise ConfigError(
            f"aggregation.max-client-share: a share in (0, 1] (1 = no cap), "
            f"got {settings.aggregation_max_client_share}."
        )
    partitions = settings.selection.budget_partitions
    if partitions is not None and partitions < settings.min_clients:
        raise ConfigError(
            f"selection.budget: {partitions} budgets, one per client, but min-clients="
            f"{settings.min_clients} clients must connect; give one number, or one per client."
        )
    return settings


@functools.cache
def run_config_keys() -> frozenset[str]:
    """Every key :func:`parse_run_config` reads (those of ``[tool.flwr.app.config]``), found by reading
    an empty config, so the list cannot drift from the parser."""
    reader = _Reader({})
    _read(reader, SCORERS, ALGORITHMS)
    return frozenset(reader.keys)


def _read(r: _Reader, scorers: tuple[str, ...], selectors: tuple[str, ...]) -> RunSettings:
    """:class:`RunSettings` from the reader's config, each value checked on its own."""
    defaults = RunSettings()
    return RunSettings(
        num_rounds=r.positive("num-server-rounds", int, defaults.num_rounds),
        run_name=r.get("run-name", str, defaults.run_name),
        output_dir=r.get("output-dir", str, defaults.output_dir),
        seed=r.get("seed", int, defaults.seed),
        min_clients=r.positive("min-clients", int, defaults.min_clients),
        round_timeout=r.positive("round-timeout", float, defaults.round_timeout),
        clients_per_round=r.positive("clients-per-round", int, defaults.clients_per_round, allow_zero=True),
        model=ModelSettings(
            name=r.get("model.name", str, ModelSettings.name),
            cache_dir=r.get("model.cache-dir", str, ModelSettings.cache_dir),
            pretrain_steps=r.positive("model.pretrain-steps", int, ModelSettings.pretrain_steps),
            pretrain_exclude=parse_pretrain_exclude(r.get("model.pretrain-exclude", str, "")),
        ),
        peft=PeftSettings(
            method=r.choice("peft.method", PeftSettings.method, PEFT_METHODS),
            rank=r.positive("peft.lora-rank", int, PeftSettings.rank),
            alpha=r.positive("peft.lora-alpha", int, PeftSettings.alpha),
            dropout=r.positive("peft.lora-dropout", float, PeftSettings.dropout, allow_zero=True),
            target_modules=tuple(
                part.strip()
                for part in r.get("peft.target-modules", str, ",".join(PeftSettings.target_modules)).split(",")
                if part.strip()
            ),
            adapter_reduction=r.positive("peft.adapter-reduction", int, PeftSettings.adapter_reduction),
            prompt_length=r.positive("peft.prompt-length", int, PeftSettings.prompt_length),
        ),
        data=DataSettings(
            task=r.get("task", str, DataSettings.task),
            data_path=r.get("data.path", str, DataSettings.data_path),
            partitioning=r.get("data.partitioning", str, DataSettings.partitioning),
            alpha=r.get("data.alpha", float, DataSettings.alpha),
            seed=r.get("seed", int, defaults.seed),
            max_train=r.get("data.max-train-per-client", int, DataSettings.max_train),
            max_test=r.get("data.max-test-per-client", int, DataSettings.max_test),
            shift=split_values(r.get("data.shift", str, "none"), "data.shift"),
            questions=split_values(r.get("data.questions", str, "all"), "data.questions"),
        ),
        scoring=ScoringSettings(
            method=r.choice("scoring.method", ScoringSettings.method, scorers),
            batch_size=r.positive("scoring.batch-size", int, ScoringSettings.batch_size),
            reduction=r.choice("scoring.reduction", ScoringSettings.reduction, REDUCTIONS),
            projection_dim=r.positive("scoring.projection-dim", int, ScoringSettings.projection_dim),
        ),
        selection=SelectionSettings(
            algorithm=(algorithm := r.choice("selection.algorithm", SelectionSettings.algorithm, selectors)),
            budget=parse_budget(r.raw("selection.budget", "2")),
            pick=r.choice("selection.pick", SelectionSettings.pick, PICK_RULES),
            exact_budget=r.get("selection.exact-budget", bool, SelectionSettings.exact_budget),
            params=parse_selector_params(r.get("selection.params", str, ""), algorithm),
        ),
        train=TrainSettings(
            epochs=r.positive("train.local-epochs", int, TrainSettings.epochs),
            lr=r.positive("train.lr", float, TrainSettings.lr),
            weight_decay=r.positive("train.weight-decay", float, TrainSettings.weight_decay, allow_zero=True),
            batch_size=r.positive("train.batch-size", int, TrainSettings.batch_size),
            warmup=r.positive("train.warmup", float, TrainSettings.warmup, allow_zero=True),
            max_steps=r.positive("train.max-steps", int, TrainSettings.max_steps, allow_zero=True),
            precision=r.choice("train.precision", TrainSettings.precision, PRECISIONS),
        ),
        eval_batch_size=r.positive("eval.batch-size", int, defaults.eval_batch_size),
        eval_answer_mode=r.choice("eval.answer-mode", defaults.eval_answer_mode, ANSWER_MODES),
        aggregation_lora=r.choice("aggregation.lora", defaults.aggregation_lora, LORA_SCHEMES),
        aggregation_max_update_norm=r.positive(
            "aggregation.max-update-norm", float, defaults.aggregation_max_update_norm, allow_zero=True
        ),
        aggregation_max_client_share=r.positive(
            "aggregation.max-client-share", float, defaults.aggregation_max_client_share
        ),
        aggregation_robust=r.choice("aggregation.robust", defaults.aggregation_robust, ROBUST_SCHEMES),
        device=r.get("device", str, defaults.device),
        resume=r.get("resume", str, defaults.resume),
        control=r.choice("control", defaults.control, CONTROLS),
        tracking=TrackingSettings(
            trackers=parse_trackers(r.get("tracking.to", str, "")),
            uri=r.get("tracking.uri", str, TrackingSettings.uri),
            experiment=r.get("tracking.experiment", str, TrackingSettings.experiment),
        ),
        dp=PrivacySettings(
            clip_norm=r.positive("dp.clip-norm", float, PrivacySettings.clip_norm, allow_zero=True),
            noise_multiplier=r.positive(
                "dp.noise-multiplier", float, PrivacySettings.noise_multiplier, allow_zero=True
            ),
            delta=r.positive("dp.delta", float, PrivacySettings.delta),
            target_epsilon=r.positive("dp.target-epsilon", float, PrivacySettings.target_epsilon, allow_zero=True),
            score_noise_multiplier=r.positive(
                "dp.score-noise-multiplier", float, PrivacySettings.score_noise_multiplier, allow_zero=True
            ),
            hide_participation=r.get("dp.hide-participation", bool, PrivacySettings.hide_participation),
        ),
        secagg=r.get("secagg", bool, defaults.secagg),
    )


def _check_narrowed(key: str, given: tuple[str, ...], known: tuple[str, ...]) -> None:
    """A caller's list of allowed ``key`` values must come from the core's own list ``known``."""
    unknown = [name for name in given if name not in known]
    if unknown:
        raise ValueError(f"{key}: {unknown} are not implemented; the core knows {list(known)}.")


def check_privacy(settings: RunSettings) -> None:
    """The ``dp.*`` keys: finite, ``dp.delta`` in (0, 1), and with DP on updates the aggregation it
    needs (unweighted linear mean: ``aggregation.robust=''``, ``aggregation.lora='separate'``)."""
    dp = settings.dp
    for key, value in (
        ("dp.clip-norm", dp.clip_norm),
        ("dp.noise-multiplier", dp.noise_multiplier),
        ("dp.target-epsilon", dp.target_epsilon),
        ("dp.score-noise-multiplier", dp.score_noise_multiplier),
    ):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: a finite number >= 0 (0 = off), got {value}.")
    if not dp.delta < 1:
        raise ConfigError(f"dp.delta: a probability in (0, 1), e.g. 1e-5, got {dp.delta}.")
    if dp.hide_participation and not dp.noise_multiplier > 0:
        raise ConfigError(
            "dp.hide-participation: needs noise on the updates; set dp.clip-norm and dp.noise-multiplier > 0."
        )
    if dp.noise_multiplier > 0 and not dp.updates:
        raise ConfigError("dp.noise-multiplier: noise on updates needs a clipping bound; set dp.clip-norm > 0.")
    if dp.target_epsilon > 0 and not (dp.noise_multiplier > 0 or dp.scores):
        raise ConfigError(
            "dp.target-epsilon: nothing is noised, so every epsilon is infinite; set "
            "dp.noise-multiplier (with dp.clip-norm) or dp.score-noise-multiplier > 0, or "
            "dp.target-epsilon=0."
        )
    if dp.target_epsilon > 0 and dp.updates and not dp.noise_multiplier > 0:
        raise ConfigError(
            "dp.target-epsilon: updates are clipped but not noised (dp.noise-multiplier=0), so their "
            "epsilon is infinite and no round fits; set dp.noise-multiplier > 0."
        )
    if dp.updates and settings.control == "local-only":
        raise ConfigError(
            "control: 'local-only' releases no average, so dp.clip-norm would protect nothing and its "
            "epsilon would mean nothing; set dp.clip-norm=0 or control=''."
        )
    if dp.updates and settings.aggregation_robust:
        raise ConfigError(
            f"aggregation.robust: {settings.aggregation_robust!r} has no L2 sensitivity bound, so "
            "differential privacy (dp.clip-norm > 0) needs the mean; set aggregation.robust=''."
        )
    if dp.updates and settings.peft.method == "lora" and settings.aggregation_lora != "separate":
        raise ConfigError(
            "aggregation.lora: the product mean is not linear in the clients' factors, so "
            "differential privacy (dp.clip-norm > 0) needs aggregation.lora='separate'."
        )


def check_secagg(settings: RunSettings) -> None:
    """``secagg=true``: the server learns only each layer's sum, so the clients must clip (the bound is
    also the quantisation range) and every step that needs one client's units is refused here
    (docs/privacy.md says which checks are skipped instead)."""
    if not settings.secagg:
        return
    if not settings.dp.updates:
        raise ConfigError(
            "secagg: each client must clip its change, and the bound is the range its masked vector "
            "is quantised to; set dp.clip-norm > 0 (e.g. 1.0)."
        )
    if settings.control:
        raise ConfigError(
            f"secagg: control={settings.control!r} releases no layer average to protect; set "
            "control='' or secagg=false."
        )
    if settings.aggregation_robust:
        raise ConfigError(
            f"aggregation.robust: {settings.aggregation_robust!r} needs every client's units, and "
            "secagg=true shows the server only each layer's sum; set aggregation.robust='' or "
            "secagg=false."
        )
    if settings.peft.method == "lora" and settings.aggregation_lora != "separate":
        raise ConfigError(
            "aggregation.lora: the product mean needs every client's factors, and secagg=true shows "
            "the server only each layer's sum; set aggregation.lora='separate'."
        )


def check_against_model(settings: RunSettings, num_layers: int) -> None:
    """Checks that need the model: budgets within 1..L (by the rule of
    :func:`~f3ocus_core.selection.client_budgets`)."""
    budget = settings.selection.budget
    client_budgets(budget, range(len(budget)), num_layers=num_layers)
    if settings.selection.algorithm == "fixed":
        layers = selector_params("fixed", settings.selection.params).layers
        if max(layers) >= num_layers:
            raise ConfigError(
                f"selection.params: layer {max(layers)} does not exist; the model has layers 0..{num_layers - 1}."
            )
