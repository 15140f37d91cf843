"""The offline processor, answer heads, and the built-in base checkpoint's from_pretrained path."""

import torch
from PIL import Image
from transformers import ViltProcessor

from f3ocus_core.models import build_processor, load_vqa_model, logits_of, set_answer_head, tiny_vilt
from f3ocus_core.pretrain import ensure_base_checkpoint
from f3ocus_core.training import make_collate


def test_processor_tokenizes_known_words_and_round_trips(tmp_path):
    processor = build_processor(["What color is the shape?", "Is there a circle?"])
    assert processor.tokenizer.tokenize("what colour is the circle") == ["what", "[UNK]", "is", "the", "circle"]
    processor.save_pretrained(tmp_path)
    loaded = ViltProcessor.from_pretrained(tmp_path)
    collate = make_collate(loaded, ["yes", "no"])
    rows = [{"image": Image.new("L", (28, 28)), "question": "is there a circle?", "answers": ["no"]}]
    batch = collate(rows)  # grey-scale medical images go through as RGB
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert batch["labels"].tolist() == [[0.0, 1.0]]
    assert loaded.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])[0] == "[CLS]"


def test_answer_head_keeps_rows_of_known_answers():
    model = tiny_vilt(num_labels=3)
    old = model.classifier[-1].weight.detach().clone()
    set_answer_head(model, ["answer-2", "new", "answer-0"], seed=1)
    new = model.classifier[-1].weight
    assert torch.equal(new[0], old[2]) and torch.equal(new[2], old[0])
    assert not torch.equal(new[1], old[1])
    assert model.config.id2label == {0: "answer-2", 1: "new", 2: "answer-0"}


def test_base_checkpoint_is_built_once_and_loads_with_from_pretrained(tmp_path):
    first = ensure_base_checkpoint(tmp_path, steps=3, seed=0)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert ensure_base_checkpoint(tmp_path, steps=3, seed=0) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written folder left
    model, processor = load_vqa_model(str(first))
    encoded = processor(images=[Image.new("RGB", (64, 64))], text=["what shape is in the image?"], return_tensors="pt")
    assert logits_of(model, dict(encoded)).shape == (1, 13)
    assert "circle" in model.config.label2id
