"""Bad config values stop the run before training, with a message that names the key."""

import tomllib
from pathlib import Path

import pytest

from f3ocus_core.config import ConfigError, check_against_model, parse_run_config
from f3ocus_core.pretrain import resolve_model_path

SCORERS = ("lntk", "fd")
SELECTORS = ("nsga2", "exact")


def _defaults() -> dict:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    return dict(pyproject["tool"]["flwr"]["app"]["config"])


def _parse(**overrides):
    config = _defaults()
    config.update({key.replace("__", ".").replace("_", "-"): value for key, value in overrides.items()})
    return parse_run_config(config, SCORERS, SELECTORS)


def test_the_shipped_defaults_parse():
    settings = _parse()
    assert settings.data.task == "easy-vqa"
    assert settings.selection.algorithm == "nsga2"
    assert settings.selection.budgets_for(4) == [2, 2, 2, 2]
    assert settings.peft.target_modules == ("query", "value", "dense")
    assert settings.data.partitioning == "dirichlet"


def test_budget_lists_are_one_per_client():
    settings = _parse(selection__budget="1,2,3")
    assert settings.selection.budgets_for(3) == [1, 2, 3]
    with pytest.raises(ConfigError, match="selection.budget: 3 budgets given for 4 clients"):
        settings.selection.budgets_for(4)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"selection__algorithm": "genetic"}, "selection.algorithm"),
        ({"scoring__method": "entropy"}, "scoring.method"),
        ({"selection__budget": "0"}, "selection.budget"),
        ({"selection__budget": "2,x"}, "selection.budget"),
        ({"num_server_rounds": 0}, "num-server-rounds"),
        ({"num_server_rounds": "three"}, "num-server-rounds"),
        ({"task": "imagenet"}, "task"),
        ({"peft__method": "prefix"}, "peft.method"),
        ({"train__lr": -1.0}, "train.lr"),
        ({"selection__params": "population"}, "selection.params"),
        ({"data__partitioning": "random"}, "data.partitioning"),
        ({"model__name": ""}, "model.name"),
    ],
)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        _parse(**overrides)


def test_budget_above_the_number_of_layers_is_refused():
    with pytest.raises(ConfigError, match="selection.budget"):
        check_against_model(_parse(selection__budget="2,5"), num_layers=4)
    check_against_model(_parse(selection__budget="2,4"), num_layers=4)


def test_unknown_model_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="model.name"):
        resolve_model_path("builtin:gpt-17", tmp_path)
    from f3ocus_core.models import load_vqa_model

    with pytest.raises(ValueError, match="model.name"):
        load_vqa_model(str(tmp_path / "no-such-model"))


def test_selector_params_are_numbers():
    assert _parse(selection__params="population=40, generations=25").selection.params == {
        "population": 40,
        "generations": 25,
    }
