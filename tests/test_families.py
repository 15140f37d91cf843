"""Model families: the registry, the loader, answer scoring of generative families, LNTK exactness on
every family, a one-round federated run with LoRA and with adapters on each generative family (ViLT's
runs with every PEFT mode are in test_peft_modes.py), and which PEFT modes each family takes."""

import functools

import datasets
import numpy as np
import pytest
import torch

from f3ocus_core.data import easy_vqa
from f3ocus_core.families import FAMILIES, family_of, family_of_processor
from f3ocus_core.families.generative import YES_NO, log_odds, matches, yes_no_ids
from f3ocus_core.families.offline_tokenizers import word_tokenizer
from f3ocus_core.importance import score_layers
from f3ocus_core.importance.outputs import reduced_outputs
from f3ocus_core.layers import layer_map_for
from f3ocus_core.models import load_vqa_model, logits_of, loss_of
from f3ocus_core.training import evaluate, make_collate, train
from tests.inprocess_grid import run_server_app
from tests.test_importance import dense_lntk_of

GENERATIVE = ("blip", "blip2", "llava", "paligemma")
LABELS = ["circle", "red", "yes", "no"]


@functools.cache
def pool() -> datasets.Dataset:
    return easy_vqa.base_pool(0)


def rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` easy-vqa rows of the base pool, answers mapped into :data:`LABELS` where they are not."""
    pool_ = pool()
    picked = [pool_[int(i)] for i in np.random.default_rng(seed).choice(len(pool_), n, replace=False)]
    return [
        dict(row, answers=[row["answers"][0] if row["answers"][0] in LABELS else LABELS[i % 4]])
        for i, row in enumerate(picked)
    ]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than on many when the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, str]:
    """A randomly initialised tiny model of each generative family, saved with save_pretrained."""
    questions = pool()["question"]
    folders = {}
    for name in GENERATIVE:
        family = FAMILIES[name]
        processor = family.build_processor(questions, easy_vqa.ANSWERS)
        torch.manual_seed(0)
        model = family.model_class(family.tiny_config(processor, easy_vqa.ANSWERS)).eval()
        folder = tmp_path_factory.mktemp(f"tiny-{name}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


@pytest.mark.parametrize("name", GENERATIVE)
def test_a_saved_tiny_model_loads_through_the_loader_with_its_family(saved, name):
    model, processor = load_vqa_model(saved[name])
    assert family_of(model) is FAMILIES[name] and family_of_processor(processor) is FAMILIES[name]
    assert isinstance(model, FAMILIES[name].model_class)
    batch = make_collate(processor, LABELS)(rows(3))
    again, _ = load_vqa_model(saved[name])
    torch.testing.assert_close(logits_of(model, batch), logits_of(again, batch), rtol=0, atol=0)
    layer_map = layer_map_for(model)
    towers = {
        "blip": ("vision", "text", "decoder"),
        "blip2": ("vision", "qformer", "language"),
        "llava": ("vision", "language"),
        "paligemma": ("vision", "language"),
    }[name]
    assert layer_map.names == tuple(f"{tower}.{k}" for tower in towers for k in range(2))


def _recording(messages: list):
    """A wrapper of a client handler that records each message it gets (to see who trained)."""

    def wrap(handler):
        def wrapped(msg, context):
            messages.append(msg)
            return handler(msg, context)

        return wrapped

    return wrap


def test_every_generative_built_in_base_is_pretrained_cached_and_loaded(tmp_path, monkeypatch):
    from f3ocus_core.pretrain import BUILTIN_MODELS, resolve_model_path

    small = pool().select(range(40))
    monkeypatch.setattr(easy_vqa, "base_pool", lambda seed, exclude=(): small)
    assert set(BUILTIN_MODELS.values()) == set(FAMILIES)
    for name in GENERATIVE:
        path = resolve_model_path(f"builtin:tiny-{name}-easyvqa", tmp_path, steps=2, seed=0)
        assert path == resolve_model_path(f"builtin:tiny-{name}-easyvqa", tmp_path, steps=2, seed=0)
        model, processor = load_vqa_model(path)
        assert family_of(model) is FAMILIES[name]
        assert logits_of(model, make_collate(processor, LABELS)(rows(2))).shape == (2, len(LABELS))


def test_a_model_of_no_family_stops_with_model_name_and_the_families(tmp_path):
    from transformers import BertConfig

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model\.name.*'bert'.*vilt.*blip.*blip2.*llava.*paligemma"):
        load_vqa_model(str(tmp_path))


def test_a_run_on_a_model_of_no_family_stops_before_any_client_trains(tmp_path, shipped_run_config):
    from flwr.app import MessageType
    from transformers import BertConfig

    from tests.inprocess_grid import run_server_app

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path / "bert"
    )
    config = dict(
        shipped_run_config,
        **{"model.name": str(tmp_path / "bert"), "output-dir": str(tmp_path / "out"), "run-name": "bad"},
    )
    trained = []

    with pytest.raises(ValueError, match=r"model\.name.*paligemma"):
        run_server_app(config, num_nodes=2, wrap={MessageType.TRAIN: _recording(trained)})
    assert trained == []


@pytest.mark.parametrize("name", GENERATIVE)
def test_answer_scores_are_the_log_odds_of_each_answer_and_do_not_depend_on_padding(saved, name):
    model, processor = load_vqa_model(saved[name])
    batch = make_collate(processor, LABELS)(rows(4))
    scores = logits_of(model, batch)
    assert scores.shape == (4, len(LABELS))
    # Likelihoods of distinct EOS-terminated answers sum to at most 1.
    assert (torch.sigmoid(scores).sum(dim=1) <= 1 + 1e-5).all()
    # Each example scored alone (no padding) gets the scores it got in the padded batch.
    for i, row in enumerate(rows(4)):
        alone = logits_of(model, make_collate(processor, LABELS)([row]))
        torch.testing.assert_close(alone[0], scores[i], rtol=1e-3, atol=1e-3)


def test_log_odds_is_stable_and_inverts_the_sigmoid():
    loglik = torch.tensor([-50.0, -3.0, -0.7, -0.01, -1e-5], dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(log_odds(loglik)), loglik.exp())


def test_exact_match_reads_generated_tokens_up_to_eos():
    batch = {
        "answer_ids": torch.tensor([[[5, 7, 9, 2], [5, 8, 2, 0]]] * 2),
        "answer_mask": torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 0]]] * 2),
    }
    decided = matches([[8, 2, 3], [7, 9, 4]], batch, eos=2, skip=1)
    assert decided.tolist() == [[0.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize("name", GENERATIVE)
def test_lntk_is_exact_against_a_dense_jacobian(saved, name):
    model, processor = load_vqa_model(saved[name])
    batch = make_collate(processor, LABELS[:3])(rows(2))
    layer_map = layer_map_for(model)
    scores = score_layers(model, batch, layer_map, "lntk", "projection", 2, seed=3)
    reference = dense_lntk_of(model, batch, layer_map, lambda m, b: reduced_outputs(m, b, "projection", 2, 3))
    np.testing.assert_allclose(scores.raw, reference, rtol=1e-4)
    assert (reference > 0).all()


def _fit(model: torch.nn.Module, batch: dict, steps: int = 25) -> torch.Tensor:
    """``steps`` full-batch AdamW steps on ``batch``; the label probabilities after them."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = loss_of(logits_of(model, batch), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(logits_of(model, batch))


@pytest.mark.parametrize("name", GENERATIVE)
def test_multi_label_yes_no_scores_let_two_labels_pass_where_ranking_cannot(saved, name):
    data = [dict(row, answers=["circle", "red"]) for row in rows(4)]  # two positives of LABELS per row
    ranked = make_collate(load_vqa_model(saved[name])[1], LABELS)(data)
    model, processor = load_vqa_model(saved[name])
    collate = make_collate(processor, LABELS, multi_label=True)
    batch = collate(data)
    assert YES_NO in batch and batch[YES_NO].shape == (4, 2) and YES_NO not in ranked
    assert torch.equal(batch["labels"], ranked["labels"])
    # Ranking: after the same training the answers' probabilities still sum to at most 1.
    old = _fit(load_vqa_model(saved[name])[0], ranked)
    assert (old.sum(dim=1) <= 1 + 1e-5).all() and not ((old[:, :2] > 0.5).all(dim=1)).any()
    new = _fit(model, batch)
    assert (new[:, :2] > 0.5).all() and (new[:, 2:] < 0.5).all()
    # Greedy generation answers "yes" to both labels' questions; F1 is perfect in both answer modes.
    assert torch.equal(FAMILIES[name].generate(model, batch), batch["labels"])
    dataset = datasets.Dataset.from_list(data)
    for mode in ("rank", "generate"):
        assert evaluate(model, dataset, collate, "multilabel", answer_mode=mode)["f1"] == 1.0
    # Each example alone (no padding) gets the scores it got in the padded batch.
    scores = logits_of(model, batch)
    for i, row in enumerate(data):
        torch.testing.assert_close(logits_of(model, collate([row]))[0], scores[i], rtol=1e-3, atol=1e-3)


def test_lntk_is_exact_against_a_dense_jacobian_on_multi_label_scores(saved):
    model, processor = load_vqa_model(saved["llava"])
    batch = make_collate(processor, LABELS[:3], multi_label=True)(rows(2))
    layer_map = layer_map_for(model)
    scores = score_layers(model, batch, layer_map, "lntk", "projection", 2, seed=3)
    reference = dense_lntk_of(model, batch, layer_map, lambda m, b: reduced_outputs(m, b, "projection", 2, 3))
    np.testing.assert_allclose(scores.raw, reference, rtol=1e-4)
    assert (reference > 0).all()


def test_a_tokenizer_without_yes_and_no_cannot_take_a_multi_label_task():
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_tokenizer(["what shape"], ("<pad>", "<unk>"), "<unk>", "$A", None),
        pad_token="<pad>",
        unk_token="<unk>",
    )
    with pytest.raises(ValueError, match="'yes' and 'no'"):
        yes_no_ids(tokenizer)
    for name in GENERATIVE:  # every offline tokenizer knows them, whatever its answers
        processor = FAMILIES[name].build_processor(["what shape?"], ["circle"])
        assert len(set(yes_no_ids(processor.tokenizer))) == 2


@pytest.mark.parametrize("name", GENERATIVE)
def test_full_fine_tuning_raises_the_likelihood_of_right_answers_and_both_answer_modes_evaluate(saved, name):
    from f3ocus_core.peft_units import PeftSettings, attach_units, set_trainable, unit_map

    model, processor = load_vqa_model(saved[name])
    layer_map = layer_map_for(model)
    model = attach_units(model, layer_map, PeftSettings(method="full"))
    units = unit_map(model, layer_map, "full")
    trained = set_trainable(model, units, list(range(len(layer_map))))
    assert trained and all(layer_map.layer_index(key) is not None for key in trained)
    data = rows(8)
    data[0]["answers"] = ["yes", "red"]  # a multi-label row
    dataset = datasets.Dataset.from_list([dict(row, image=row["image"]) for row in data])
    collate = make_collate(processor, LABELS)
    batch = collate(data)
    before = loss_of(logits_of(model, batch), batch).item()
    from f3ocus_core.training import TrainSettings

    train(model, dataset, collate, TrainSettings(epochs=10, lr=3e-3, batch_size=8, max_steps=6))
    assert loss_of(logits_of(model, batch), batch).item() < before
    for kind in ("vqa", "multilabel"):
        for mode in ("rank", "generate"):
            metrics = evaluate(model, dataset, collate, kind, answer_mode=mode)
            assert 0.0 <= metrics["metric"] <= 1.0 and np.isfinite(metrics["loss"])


@pytest.mark.parametrize("name", GENERATIVE)
def test_one_federated_round_with_lora(saved, shipped_run_config, tmp_path, no_figures, name):
    from peft import PeftModel

    config = round_config(
        shipped_run_config,
        tmp_path,
        saved[name],
        **{
            "selection.algorithm": shipped_run_config["selection.algorithm"],
            "eval.answer-mode": "generate" if name == "llava" else "rank",
        },
    )
    _, rows_ = run_server_app(config, num_nodes=2)
    assert [row["round"] for row in rows_] == [0, 1]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows_)
    assert {len(layers) for layers in rows_[1]["assignment"].values()} == {2}
    base, _ = load_vqa_model(saved[name])
    adapted = PeftModel.from_pretrained(base, f"{config['output-dir']}/test-run/adapter")
    assert any("lora_" in key for key, _ in adapted.named_parameters())


def test_one_federated_round_on_a_multi_label_task_asks_each_label_yes_or_no(
    saved, shipped_run_config, tmp_path, no_figures, monkeypatch
):
    from f3ocus_core.families import generative
    from tests.data_fixtures import write_task_fixture

    seen = []
    scores = generative.answer_scores

    def spy(logits, ids, scored, batch):
        seen.append(YES_NO in batch)
        return scores(logits, ids, scored, batch)

    monkeypatch.setattr(generative, "answer_scores", spy)
    root = write_task_fixture(tmp_path / "data", "4")
    config = round_config(shipped_run_config, tmp_path, saved["llava"], task="4", **{"data.path": str(root)})
    _, rows_ = run_server_app(config, num_nodes=4)
    assert [row["round"] for row in rows_] == [0, 1] and rows_[1]["metric_name"] == "f1"
    assert 0.0 <= rows_[1]["metric"] <= 1.0 and np.isfinite(rows_[1]["loss"])
    assert seen and all(seen)  # scoring, training and evaluation all used the yes/no scores


def round_config(shipped_run_config, tmp_path, path: str, **changes: object) -> dict:
    """The shipped run config shrunk to one quick round on the model at ``path``."""
    config = dict(shipped_run_config)
    config.update(
        {
            "num-server-rounds": 1,
            "run-name": "test-run",
            "output-dir": str(tmp_path / "outputs"),
            "model.name": path,
            "data.max-train-per-client": 8,
            "data.max-test-per-client": 4,
            "selection.budget": "2",
            "selection.params": "",
            "selection.algorithm": "exact",
            "train.batch-size": 4,
            "train.max-steps": 2,
            "scoring.batch-size": 4,
            "eval.answer-mode": "rank",
            **changes,
        }
    )
    return config


@pytest.mark.parametrize("name", GENERATIVE)
def test_one_federated_round_with_adapters_moves_the_adapters_of_the_assigned_layers_only(
    saved, shipped_run_config, tmp_path, no_figures, name
):
    from f3ocus_core.peft_units import load_adapter

    config = round_config(shipped_run_config, tmp_path, saved[name], **{"peft.method": "adapter"})
    _, rows_ = run_server_app(config, num_nodes=2)
    assert [row["round"] for row in rows_] == [0, 1]
    assigned = {layer for layers in rows_[1]["assignment"].values() for layer in layers}
    base, processor = load_vqa_model(saved[name])
    layer_map = layer_map_for(base)
    batch = make_collate(processor, LABELS)(rows(3))
    bare = logits_of(base, batch)
    adapted = load_adapter(base, f"{config['output-dir']}/test-run/adapter")
    moved = {
        layer_map.names[layer_map.layer_index(key)]
        for key, param in adapted.named_parameters()
        if ".adapter_up." in key and param.abs().sum() > 0
    }  # W_up starts at zero
    assert moved == {layer_map.names[layer] if isinstance(layer, int) else layer for layer in assigned}
    assert not torch.allclose(logits_of(adapted, batch), bare)


#: Per generative family, the PEFT modes it cannot take: the decoder language models' blocks take
#: token positions (no deep prompts), and Llama and Gemma blocks have no bias terms (no BitFit).
REFUSED = {"blip": (), "blip2": ("prompt",), "llava": ("bias", "prompt"), "paligemma": ("bias", "prompt")}


@pytest.mark.parametrize("name", GENERATIVE)
def test_each_family_trains_the_modes_its_layers_take_and_refuses_the_others_with_what_works(saved, name):
    from f3ocus_core.errors import ConfigError
    from f3ocus_core.peft_modes import PEFT_METHODS
    from f3ocus_core.peft_units import PeftSettings, attach_units, set_trainable, unit_map

    works = [method for method in PEFT_METHODS if method not in REFUSED[name]]
    listed = f"{', '.join(works[:-1])} or {works[-1]}"
    for method in ("layernorm", "bias", "prompt", "ia3"):
        model, processor = load_vqa_model(saved[name])
        layer_map = layer_map_for(model)
        settings = PeftSettings(method=method, target_modules=FAMILIES[name].lora_targets, prompt_length=2)
        if method in REFUSED[name]:
            with pytest.raises(ConfigError, match=rf"^peft\.method: '{method}' .*\. Use {listed}\.$"):
                attach_units(model, layer_map, settings)
            continue
        model = attach_units(model, layer_map, settings)
        units = unit_map(model, layer_map, method)
        set_trainable(model, units, list(range(len(layer_map))), head=False)
        batch = make_collate(processor, LABELS)(rows(2))
        loss_of(logits_of(model, batch), batch).backward()
        params = dict(model.named_parameters())
        reached = [
            any(params[key].grad is not None and params[key].grad.abs().sum() > 0 for key in keys)
            for keys in units.names
        ]
        assert all(reached), (method, [layer_map.names[i] for i, ok in enumerate(reached) if not ok])


def test_a_mode_the_family_cannot_take_stops_the_run_before_any_client_trains(saved, shipped_run_config, tmp_path):
    from flwr.app import MessageType

    from f3ocus_core.errors import ConfigError

    trained = []

    config = round_config(shipped_run_config, tmp_path, saved["llava"], **{"peft.method": "prompt"})
    with pytest.raises(
        ConfigError,
        match=r"peft\.method: 'prompt' cannot take LlamaDecoderLayer.*"
        r"Use lora, adapter, layernorm, ia3 or full\.",
    ):
        run_server_app(config, num_nodes=2, wrap={MessageType.TRAIN: _recording(trained)})
    assert trained == []
