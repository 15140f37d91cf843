"""The image-ablation gap (does a model read the image?) and the default base's recipe that makes it."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from f3ocus_core.ablation import image_ablation, shuffled_images


def test_shuffle_is_a_permutation_without_fixed_points():
    for n in (2, 3, 10, 257):
        donor = shuffled_images(n, seed=n)
        assert sorted(donor.tolist()) == list(range(n))
        assert not np.any(donor == np.arange(n))
    with pytest.raises(ValueError):
        shuffled_images(1, 0)


class _ColourReader(torch.nn.Module):
    """Answers red or blue from the image's mean red minus blue: a model that only reads the image."""

    def forward(self, pixel_values, **_):
        score = pixel_values[:, 0].mean(dim=(1, 2)) - pixel_values[:, 2].mean(dim=(1, 2))
        return type("Out", (), {"logits": torch.stack([score, -score], dim=1)})()


class _QuestionReader(torch.nn.Module):
    """Answers from the question alone (its length): a model blind to the image."""

    def forward(self, question_length, **_):
        return type("Out", (), {"logits": torch.stack([question_length, -question_length], dim=1)})()


def _collate(rows):
    pixels = torch.stack(
        [torch.tensor(np.asarray(r["image"].convert("RGB")), dtype=torch.float32).permute(2, 0, 1) for r in rows]
    )
    labels = torch.tensor([[float(r["answers"][0] == "red"), float(r["answers"][0] == "blue")] for r in rows])
    return {
        "pixel_values": pixels,
        "question_length": torch.tensor([float(len(r["question"])) for r in rows]),
        "labels": labels,
    }


def _colour_rows(n: int) -> datasets.Dataset:
    colours = ["red" if i % 2 else "blue" for i in range(n)]
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (4, 4), (255, 0, 0) if c == "red" else (0, 0, 255)) for c in colours],
            "question": ["what colour is it?" if i % 3 else "what colour?" for i in range(n)],
            "answers": [[c] for c in colours],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "answers": datasets.Sequence(datasets.Value("string")),
            }
        ),
    )


def test_a_model_that_reads_the_image_loses_with_shuffled_images_and_a_blind_one_does_not():
    rows = _colour_rows(40)
    seeing = image_ablation(_ColourReader(), rows, _collate, group_of=lambda answers: answers[0], batch_size=7)
    assert seeing["real"] == 1.0
    # Shuffled, a question keeps the right answer only when its donor image has the same colour.
    donor = shuffled_images(40, 0)
    same = np.mean([rows[int(d)]["answers"] == rows[i]["answers"] for i, d in enumerate(donor)])
    assert seeing["shuffled"] == pytest.approx(same) and seeing["gap"] == pytest.approx(1 - same)
    assert seeing["red.n"] + seeing["blue.n"] == seeing["n"] == 40
    blind = image_ablation(_QuestionReader(), rows, _collate, batch_size=7)
    assert blind["real"] == blind["shuffled"] and blind["gap"] == 0.0
    assert 0.0 < blind["real"] < 1.0


@pytest.mark.slow
def test_the_default_base_reads_the_image(tmp_path, shipped_run_config):
    """The default built-in base, built with its real recipe and shipped steps, then loaded from its
    folder, reads the image: on held-out client questions it gets colour questions right at least 80%
    of the time, and answers better with the real images than with shuffled ones by at least 0.05
    (a base blind to the image has gap 0; recipe v1's was 0.000). Issue 18 asks for a gap of 0.25,
    which recipe v2 does not reach (about 0.1; docs/models.md, "Do the bases read the image?")."""
    from f3ocus_core.data import easy_vqa
    from f3ocus_core.models import load_vqa_model
    from f3ocus_core.pretrain import BUILTIN_MODEL, base_metadata, ensure_base_checkpoint
    from f3ocus_core.training import make_collate

    folder = ensure_base_checkpoint(tmp_path, shipped_run_config["model.pretrain-steps"], 0, BUILTIN_MODEL)
    built = base_metadata(folder)["metrics"]
    assert built["heldout.gap"] >= 0.05 and built["heldout.colour.real"] >= 0.8, built
    model, processor = load_vqa_model(str(folder))
    questions = easy_vqa.held_out_questions(0, 600)
    again = image_ablation(model, questions, make_collate(processor, easy_vqa.ANSWERS), easy_vqa.answer_type, seed=1)
    assert again["gap"] >= 0.05, again
    assert again["colour.real"] >= 0.8, again
