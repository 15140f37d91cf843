"""The run config is checked once, when it is parsed: the budget rule, the selector's parameters, every
key that names a choice (against the core's own constants) and the keys themselves."""

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from f3ocus_core.aggregation import LORA_SCHEMES, ROBUST_SCHEMES
from f3ocus_core.config import CONTROLS, ConfigError, check_against_model, parse_run_config, run_config_keys
from f3ocus_core.data.tasks import PARTITIONINGS, TASKS
from f3ocus_core.devices import PRECISIONS
from f3ocus_core.importance import REDUCTIONS, SCORERS
from f3ocus_core.peft_units import PEFT_METHODS
from f3ocus_core.pretrain import BUILTIN_MODELS
from f3ocus_core.selection import ALGORITHMS, PICK_RULES, client_budgets, parse_budget
from f3ocus_core.selection.api import selector_params
from f3ocus_core.tracking import TRACKERS
from f3ocus_core.training import ANSWER_MODES

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
METAHEURISTICS = ("nsga2", "mopso", "aco", "abc", "sa")


def _parse(**overrides) -> object:
    return parse_run_config({**SHIPPED, **overrides})


# --- selection.budget: one rule --------------------------------------------------------------------


def test_one_budget_is_every_clients():
    assert parse_budget("3") == parse_budget(3) == (3,)
    assert client_budgets((3,), [4, 0, 2]) == [3, 3, 3]
    assert client_budgets((3,), range(5), num_partitions=5, num_layers=3) == [3] * 5


def test_a_budget_list_is_one_per_partition_id():
    budget = parse_budget(" 1, 2,2 ,3")
    assert budget == (1, 2, 2, 3)
    assert client_budgets(budget, [3, 0, 1]) == [3, 1, 2]
    assert _parse(**{"selection.budget": "1,2,2,3"}).selection.budgets_for(4) == [1, 2, 2, 3]
    assert _parse(**{"selection.budget": "1,2,2,3"}).selection.budget_partitions == 4
    assert _parse(**{"selection.budget": "2"}).selection.budget_partitions is None


def test_a_budget_list_of_the_wrong_length_names_the_key():
    with pytest.raises(ConfigError, match=r"^selection.budget: 4 budgets given for 3 clients"):
        client_budgets((1, 2, 2, 3), range(3), num_partitions=3)
    with pytest.raises(ConfigError, match=r"^selection.budget: 2 budgets given, but partition id\(s\) \[2\]"):
        client_budgets((1, 2), [0, 2])


def test_a_budget_list_shorter_than_min_clients_stops_the_parse():
    with pytest.raises(ConfigError, match=r"^selection.budget: 3 budgets, one per client, but min-clients=4"):
        _parse(**{"selection.budget": "1,2,2", "min-clients": 4})
    assert _parse(**{"selection.budget": "1,2,2", "min-clients": 3}).selection.budget_partitions == 3
    assert _parse(**{"selection.budget": "2", "min-clients": 9}).selection.budget_partitions is None


@pytest.mark.parametrize("value", ["0", "2,0,1", "-1", 0, -3])
def test_a_budget_below_one_names_the_key(value):
    with pytest.raises(ConfigError, match=r"^selection.budget: every budget must be >= 1"):
        parse_budget(value)
    with pytest.raises(ConfigError, match=r"^selection.budget:"):
        _parse(**{"selection.budget": value})


@pytest.mark.parametrize("value", ["", "two", "2,,x", True, 2.5])
def test_a_budget_that_is_no_number_names_the_key(value):
    with pytest.raises(ConfigError, match=r"^selection.budget:"):
        parse_budget(value)


def test_a_budget_above_the_layer_count_names_the_key():
    with pytest.raises(ConfigError, match=r"^selection.budget: \[5\] exceed the model's 4 layers"):
        client_budgets((2, 5), range(2), num_layers=4)
    with pytest.raises(ConfigError, match=r"^selection.budget: \[5\] exceed"):
        check_against_model(_parse(**{"selection.budget": "2,5"}), num_layers=4)
    check_against_model(_parse(**{"selection.budget": "2,4"}), num_layers=4)


@settings(max_examples=200, deadline=None)
@given(
    budget=st.lists(st.integers(-2, 12), min_size=1, max_size=8),
    ids=st.lists(st.integers(0, 9), max_size=10),
    num_layers=st.integers(1, 10),
)
def test_the_budget_rule_on_generated_settings(budget, ids, num_layers):
    """Either the budgets of the ids (the single value, or each id's entry), or an error naming the key
    that says which of the rule's conditions failed."""
    expected_error = None
    if min(budget) < 1:
        expected_error = "every budget must be >= 1"
    elif max(budget) > num_layers:
        expected_error = "exceed the model's"
    elif len(budget) > 1 and any(i >= len(budget) for i in ids):
        expected_error = "partition id"
    if expected_error:
        with pytest.raises(ConfigError, match=rf"^selection.budget: .*{expected_error}"):
            client_budgets(budget, ids, num_layers=num_layers)
        return
    got = client_budgets(budget, ids, num_layers=num_layers)
    assert got == [budget[0] if len(budget) == 1 else budget[i] for i in ids]
    assert all(1 <= b <= num_layers for b in got)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=10))
def test_a_written_budget_list_reads_back(budget):
    assert parse_budget(",".join(map(str, budget))) == tuple(budget)
    assert parse_run_config({"selection.budget": ",".join(map(str, budget))}).selection.budget == tuple(budget)


# --- selection.params ------------------------------------------------------------------------------


def test_a_typo_in_the_selector_parameters_stops_the_parse_naming_the_key():
    with pytest.raises(
        ConfigError,
        match=r"^selection.params: unknown parameter 'populaton' for selector 'nsga2'; "
        r"did you mean 'population'\?; known: .*generations",
    ):
        _parse(**{"selection.params": "populaton=40"})


def test_the_parameters_are_checked_against_the_chosen_selector():
    assert _parse(**{"selection.params": "population=40"}).selection.params == {"population": 40}
    # population is NSGA-II's: under the swarm it is unknown, and particles is the swarm's
    with pytest.raises(ConfigError, match=r"^selection.params: unknown parameter 'population' for selector 'mopso'"):
        _parse(**{"selection.algorithm": "mopso", "selection.params": "population=40"})
    assert _parse(**{"selection.algorithm": "mopso", "selection.params": "particles=6"}).selection.params == {
        "particles": 6
    }
    with pytest.raises(
        ConfigError,
        match=r"^selection.params: unknown parameter 'steps' for selector 'local'; "
        "it takes no parameters",
    ):
        _parse(**{"selection.algorithm": "local", "selection.params": "steps=3"})


@pytest.mark.parametrize(
    "params, message",
    [
        ("generations=2.5", "'generations' of selector 'nsga2' must be a whole number"),
        ("crossover=1.5", "'crossover' of selector 'nsga2' must lie in"),
        ("population=2", "'population' of selector 'nsga2' must be at least 4"),
        ("local_search=-1", "'local_search' of selector 'nsga2' must be >= 0"),
        ("polish=2", "'polish' of selector 'nsga2' must be 0/1"),
        ("population=8,population=9", "'population' is given twice"),
        ("population", "'population' is not key=value"),
        ("population=many", "value of 'population' is not a number"),
    ],
)
def test_a_selector_parameter_of_the_wrong_type_or_range_names_the_key(params, message):
    with pytest.raises(ConfigError, match="^selection.params: .*" + re.escape(message)):
        _parse(**{"selection.params": params})


@pytest.mark.parametrize("algorithm", [name for name in ALGORITHMS if name != "fixed"])
def test_every_selector_accepts_each_of_its_own_parameters_at_its_default(algorithm):
    defaults = selector_params(algorithm, {})
    names = [] if defaults is None else [f.name for f in fields(defaults)]
    if algorithm in METAHEURISTICS:
        assert {"lagrangian_start", "polish", "local_search", "hull_walk"} <= set(names)
    text = ",".join(f"{name}={float(getattr(defaults, name))}" for name in names)
    parsed = _parse(**{"selection.algorithm": algorithm, "selection.params": text}).selection.params
    assert selector_params(algorithm, parsed) == defaults


def test_fixed_needs_its_layers_at_parse_time_and_takes_them_joined_by_plus():
    with pytest.raises(ConfigError, match="^selection.params: selector 'fixed' needs its layers"):
        _parse(**{"selection.algorithm": "fixed"})
    parsed = _parse(**{"selection.algorithm": "fixed", "selection.params": "layers=1+3"})
    assert selector_params("fixed", parsed.selection.params).layers == (1, 3)
    assert selector_params("fixed", {"layers": 2}).layers == (2,)
    check_against_model(_parse(**{"selection.algorithm": "fixed", "selection.params": "layers=1+3"}), num_layers=4)
    with pytest.raises(ConfigError, match=r"^selection.params: layer 4 does not exist; the model has layers 0..3"):
        check_against_model(_parse(**{"selection.algorithm": "fixed", "selection.params": "layers=0+4"}), num_layers=4)


@settings(max_examples=100, deadline=None)
@given(
    algorithm=st.sampled_from(METAHEURISTICS + ("exact",)),
    name=st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True),
    value=st.integers(0, 50),
)
def test_a_generated_unknown_parameter_is_named(algorithm, name, value):
    assume(name not in {f.name for f in fields(selector_params(algorithm, {}))})
    config = {"selection.algorithm": algorithm, "selection.params": f"{name}={value}"}
    with pytest.raises(
        ConfigError,
        match=rf"^selection.params: unknown parameter '{name}' for selector "
        rf"'{algorithm}'",
    ):
        parse_run_config(config)


# --- keys that name a choice -----------------------------------------------------------------------

#: Each key that names a choice, and the core's constant its values come from.
CHOICES = [
    ("selection.algorithm", ALGORITHMS),
    ("selection.pick", PICK_RULES),
    ("scoring.method", SCORERS),
    ("scoring.reduction", REDUCTIONS),
    ("peft.method", PEFT_METHODS),
    ("train.precision", PRECISIONS),
    ("eval.answer-mode", ANSWER_MODES),
    ("aggregation.lora", LORA_SCHEMES),
    ("aggregation.robust", ROBUST_SCHEMES),
    ("control", CONTROLS),
    ("data.partitioning", PARTITIONINGS),
    ("task", tuple(TASKS)),
    ("tracking.to", TRACKERS),
    ("model.name", tuple(BUILTIN_MODELS)),
]


@pytest.mark.parametrize("key, choices", CHOICES, ids=[key for key, _ in CHOICES])
def test_every_value_of_the_cores_constant_is_accepted_and_others_are_not(key, choices):
    for value in choices:
        needs = {"selection.params": "layers=0+1"} if (key, value) == ("selection.algorithm", "fixed") else {}
        _parse(**{key: value}, **needs)
    wrong = (choices[0] or "none") + "x"
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .*{re.escape(repr(wrong))}"):
        _parse(**{key: wrong})


@pytest.mark.parametrize(
    "key, wrong, meant",
    [
        ("selection.algorithm", "nsg2", "nsga2"),
        ("scoring.method", "lnkt", "lntk"),
        ("peft.method", "lroa", "lora"),
        ("selection.pick", "kne", "knee"),
        ("tracking.to", "mlfow", "mlflow"),
        ("model.name", "builtin:tiny-vit-easyvqa", "builtin:tiny-vilt-easyvqa"),
    ],
)
def test_a_mistyped_choice_gets_the_closest_value(key, wrong, meant):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .*did you mean '{re.escape(meant)}'"):
        _parse(**{key: wrong})


def test_a_caller_may_narrow_the_choices_but_not_invent_them():
    with pytest.raises(ConfigError, match="^scoring.method: unknown value 'fd'"):
        parse_run_config({"scoring.method": "fd"}, scorers=("lntk",))
    with pytest.raises(ValueError, match=r"^selection.algorithm: \['genetic'\] are not implemented"):
        parse_run_config({}, selectors=("nsga2", "genetic"))


# --- the keys themselves ---------------------------------------------------------------------------


def test_the_parser_reads_exactly_the_shipped_keys_and_the_docs_list_each():
    assert run_config_keys() == set(SHIPPED)
    documented = set(re.findall(r"`([a-z][a-z.-]*)`", (ROOT / "docs" / "config.md").read_text()))
    assert run_config_keys() <= documented


@pytest.mark.parametrize(
    "key, meant",
    [
        ("scoring.batchsize", "scoring.batch-size"),
        ("selection.algoritm", "selection.algorithm"),
        ("num-rounds", "num-server-rounds"),
    ],
)
def test_an_unknown_key_stops_the_parse_naming_it(key, meant):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: not a run-config key; did you mean '{meant}'"):
        _parse(**{key: 1})
