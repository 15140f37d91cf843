"""``model.pretrain-exclude``: a question family left out of the built-in base's pretraining, part of
its cache key, while its vocabulary still covers every word."""

from pathlib import Path

import pytest

from f3ocus_core.config import ConfigError, parse_run_config
from f3ocus_core.data import easy_vqa
from f3ocus_core.models import load_vqa_model
from f3ocus_core.pretrain import ensure_base_checkpoint, resolve_model_path


def test_the_base_pool_leaves_the_excluded_families_out():
    everything = easy_vqa.base_pool(0)
    kept = easy_vqa.base_pool(0, ("negation",))
    families = {easy_vqa.question_family(q, a[0]) for q, a in zip(kept["question"], kept["answers"])}
    assert families == {"colour", "shape", "yesno"}
    negated = sum(easy_vqa.family_mask(everything, {"negation"}))
    assert negated > 1000 and len(kept) == len(everything) - negated
    assert not any(" not " in q or q.startswith("is no ") for q in kept["question"])


def test_the_cache_key_holds_the_excluded_families(tmp_path, monkeypatch):
    built = []

    def fake_build(out_dir, steps, seed, name, exclude=()):
        built.append(tuple(exclude))
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr("f3ocus_core.pretrain.build_base_checkpoint", fake_build)
    plain = ensure_base_checkpoint(tmp_path, steps=5, seed=0)
    negation = ensure_base_checkpoint(tmp_path, steps=5, seed=0, exclude=("negation",))
    both = ensure_base_checkpoint(tmp_path, steps=5, seed=0, exclude=("negation", "colour"))
    assert len({plain, negation, both}) == 3
    assert negation.name.endswith("-no-negation") and both.name.endswith("-no-colour-no-negation")
    assert ensure_base_checkpoint(tmp_path, steps=5, seed=0, exclude=("colour", "negation")) == both
    assert built == [(), ("negation",), ("negation", "colour")]
    with pytest.raises(ValueError, match="^model.pretrain-exclude: unknown question family"):
        ensure_base_checkpoint(tmp_path, steps=5, seed=0, exclude=("negations",))


def test_an_excluding_base_still_knows_every_word(tmp_path):
    path = resolve_model_path("builtin:tiny-vilt-easyvqa", tmp_path, steps=1, seed=0, exclude=("negation",))
    assert path.endswith("-no-negation")
    _, processor = load_vqa_model(path)
    tokenizer = processor.tokenizer
    for question in ("is there not a circle?", "does the image not contain a red shape?", "is no red shape present?"):
        ids = tokenizer(question)["input_ids"]
        assert tokenizer.unk_token_id not in ids, question


def _parse(shipped_run_config, **overrides):
    return parse_run_config({**shipped_run_config, **overrides}, ("lntk",), ("nsga2",))


def test_run_config_keys_parse(shipped_run_config):
    settings = _parse(
        shipped_run_config,
        **{"model.pretrain-exclude": "negation, colour", "data.shift": "none,invert", "data.questions": "all,negation"},
    )
    assert settings.model.pretrain_exclude == ("colour", "negation")
    assert settings.data.shift == ("none", "invert") and settings.data.questions == ("all", "negation")
    assert _parse(shipped_run_config).model.pretrain_exclude == ()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.pretrain-exclude": "negations"}, "^model.pretrain-exclude: unknown question family"),
        ({"model.pretrain-exclude": "colour,shape,yesno,negation"}, "^model.pretrain-exclude: leaves no question"),
        (
            {"model.pretrain-exclude": "negation", "model.name": "some/hub-model"},
            "^model.pretrain-exclude: applies to the built-in bases only",
        ),
        ({"data.shift": "none,sepia"}, "^data.shift: unknown shift"),
        ({"data.questions": "negation", "task": "task2-modality"}, "^data.questions:"),
    ],
)
def test_bad_values_name_their_key(shipped_run_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _parse(shipped_run_config, **overrides)


def test_a_run_with_shifted_clients_trains_on_the_excluding_base(small_run_config, no_figures, monkeypatch):
    """The keys reach both apps: the server and each client load the base without negation, the
    client with data.questions='negation' trains on negated questions only, and every round's row
    has its coverage diagnostics."""
    import json

    from flwr.app import MessageType

    from tests.inprocess_grid import run_server_app

    seen_questions = {}

    def spy(handler):
        def wrapped(msg, context):
            from client_app import app as client

            settings = client.parse_run_config(context.run_config)
            pid = int(context.node_config["partition-id"])
            data = client._data(settings.data, pid, int(context.node_config["num-partitions"]))
            seen_questions[pid] = {
                easy_vqa.question_family(q, a[0]) for q, a in zip(data.train["question"], data.train["answers"])
            }
            return handler(msg, context)

        return wrapped

    config = dict(
        small_run_config,
        **{
            "num-server-rounds": 1,
            "model.pretrain-exclude": "negation",
            "data.shift": "invert,none",
            "data.questions": "all-negation,negation",
        },
    )
    _, rows = run_server_app(config, num_nodes=2, wrap={MessageType.TRAIN: spy})
    record = json.loads((Path(config["output-dir"]) / config["run-name"] / "config.json").read_text())
    assert record["model_path"].endswith("-steps30-seed0-no-negation")
    assert seen_questions == {0: {"colour", "shape", "yesno"}, 1: {"negation"}}
    diag = rows[1]["coverage_diagnostics"]
    assert diag["num_layers"] == 4 and set(diag["importance_share"]) == set(rows[1]["assignment"])
