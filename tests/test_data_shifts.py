"""Clients that differ as hospitals do: per-partition image shifts (``data.shift``) and question
families (``data.questions``), checked on real easy-vqa images and questions."""

import easy_vqa as easy_vqa_package
import numpy as np
import pytest
from PIL import Image, ImageFilter

from f3ocus_core.data import easy_vqa
from f3ocus_core.data.shifts import SHIFTS, Shift, parse_shift, shift_image
from f3ocus_core.data.tasks import DataSettings, check_settings, load_client_data
from f3ocus_core.errors import ConfigError


@pytest.fixture(scope="module")
def image() -> Image.Image:
    """A real easy-vqa image (a coloured shape on a tinted background)."""
    return Image.open(easy_vqa_package.get_train_image_paths()[0]).convert("RGB")


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_invert_grey_channels_and_rotate_do_what_they_say(image):
    x = _px(image)
    assert np.array_equal(_px(shift_image(image, parse_shift("invert"))), 255 - x)
    grey = _px(shift_image(image, parse_shift("grey")))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    assert np.abs(grey[..., 0] - luma).max() <= 1
    assert len(np.unique(x.reshape(-1, 3), axis=0)) > len(np.unique(grey.reshape(-1, 3), axis=0))
    swapped = _px(shift_image(image, parse_shift("channels")))  # default gbr: new R is the old G, ...
    assert np.array_equal(swapped, x[..., [1, 2, 0]])
    assert np.array_equal(_px(shift_image(image, parse_shift("channels:bgr"))), x[..., ::-1])
    assert np.array_equal(_px(shift_image(image, parse_shift("rotate"))), np.rot90(x, 1))
    assert np.array_equal(_px(shift_image(image, parse_shift("rotate:180"))), np.rot90(x, 2))
    assert np.array_equal(_px(shift_image(image, parse_shift("none"))), x)


def test_blur_smooths_edges_and_keeps_the_mean(image):
    x = _px(image)
    blurred = _px(shift_image(image, parse_shift("blur:2")))

    def edges(a):
        return np.square(np.diff(a, axis=0)).mean() + np.square(np.diff(a, axis=1)).mean()

    assert edges(blurred) < 0.5 * edges(x)  # sharp steps become gentle slopes
    assert abs(blurred.mean() - x.mean()) < 2
    assert np.array_equal(blurred, _px(image.filter(ImageFilter.GaussianBlur(2))))


def test_noise_is_seeded_per_client_and_has_the_asked_spread(image):
    x = _px(image)
    a = _px(shift_image(image, parse_shift("noise:0.1"), seed=5))
    assert np.array_equal(a, _px(shift_image(image, parse_shift("noise:0.1"), seed=5)))
    assert not np.array_equal(a, _px(shift_image(image, parse_shift("noise:0.1"), seed=6)))
    inside = (x > 80) & (x < 175)  # far from 0 and 255, where clipping cannot cut the noise
    assert inside.sum() > 100
    assert 0.08 * 255 < (a - x)[inside].std() < 0.12 * 255
    assert abs((a - x)[inside].mean()) < 4


@pytest.mark.parametrize(
    "value", ["sepia", "invert:2", "rotate:45", "channels:rgb", "channels:rgg", "blur:0", "noise:-1", "noise:x"]
)
def test_bad_shifts_name_the_key(value):
    with pytest.raises(ConfigError, match="^data.shift:"):
        parse_shift(value)


def test_every_shift_has_a_default_that_parses():
    assert [parse_shift(name).name for name in SHIFTS] == list(SHIFTS)
    assert parse_shift("gray") == Shift("grey")


def test_shift_applies_per_partition_to_train_and_test():
    plain = DataSettings(partitioning="iid", max_train=12, max_test=6)
    shifted = DataSettings(partitioning="iid", max_train=12, max_test=6, shift="none,invert,noise")
    for pid in range(3):
        a, b = load_client_data(plain, pid, 3), load_client_data(shifted, pid, 3)
        for split in ("train", "test"):
            assert getattr(a, split)["question"] == getattr(b, split)["question"]
            before = [_px(row) for row in getattr(a, split)["image"]]
            after = [_px(row) for row in getattr(b, split)["image"]]
            if pid == 0:
                assert all(np.array_equal(p, q) for p, q in zip(before, after))
            elif pid == 1:
                assert all(np.array_equal(255 - p, q) for p, q in zip(before, after))
            else:
                assert all(not np.array_equal(p, q) for p, q in zip(before, after))
    again = load_client_data(shifted, 2, 3)  # the noise is the same on a second load
    assert all(np.array_equal(_px(p), _px(q)) for p, q in zip(again.train["image"], b.train["image"]))


def test_one_shift_is_every_clients_and_a_wrong_count_names_the_key():
    settings = DataSettings(partitioning="iid", max_train=4, max_test=2, shift="grey")
    assert settings.shift == ("grey",)
    image = _px(load_client_data(settings, 3, 4).train["image"][0])
    assert np.array_equal(image[..., 0], image[..., 2])
    with pytest.raises(ConfigError, match="^data.shift: 3 values given for 4 clients"):
        check_settings(DataSettings(shift="none,grey,invert"), 4)
    with pytest.raises(ConfigError, match="^data.shift: 3 values given for 4 clients"):
        load_client_data(DataSettings(shift="none,grey,invert"), 0, 4)


def test_question_families_cover_every_question_and_match_the_wording():
    questions, answers, _ = easy_vqa_package.get_train_questions()
    families = [easy_vqa.question_family(q, a) for q, a in zip(questions, answers)]
    assert set(families) == set(easy_vqa.FAMILIES)
    shares = {family: families.count(family) / len(families) for family in easy_vqa.FAMILIES}
    assert shares == pytest.approx({"colour": 0.13, "shape": 0.13, "yesno": 0.37, "negation": 0.37}, abs=0.01)
    for question, family in zip(questions, families):
        negated = " not " in question or question.startswith("is no ")
        assert (family == "negation") == negated
        if family == "colour":
            assert "color" in question
        if family == "shape":
            assert "shape is" in question or "shape does" in question or question.startswith("what is the ")


def test_data_questions_keeps_families_per_partition_and_leaves_the_others_alone():
    base = DataSettings(partitioning="iid", max_train=0, max_test=0)
    settings = DataSettings(partitioning="iid", max_train=0, max_test=0, questions="all,negation,all-negation")

    def families(data):
        return {easy_vqa.question_family(q, a[0]) for q, a in zip(data.train["question"], data.train["answers"])}

    assert load_client_data(settings, 0, 3).train["question"] == load_client_data(base, 0, 3).train["question"]
    assert families(load_client_data(settings, 1, 3)) == {"negation"}
    kept = load_client_data(settings, 2, 3)
    assert families(kept) == {"colour", "shape", "yesno"}
    everything = load_client_data(base, 2, 3)
    assert set(kept.train["image_key"]) <= set(everything.train["image_key"]) | set(everything.test["image_key"])
    assert easy_vqa.parse_families("colour+shape", "k") == {"colour", "shape"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"questions": "negations"}, "^data.questions: .*unknown question family"),
        ({"questions": "all-colour-shape-yesno-negation"}, "^data.questions: .*leaves no question family"),
        ({"questions": "negation", "task": "task1-domain"}, "^data.questions: question families are easy-vqa's"),
        ({"shift": "none,,sepia"}, "^data.shift: unknown shift"),
        ({"shift": ""}, "^data.shift: empty"),
    ],
)
def test_bad_data_values_name_their_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DataSettings(**kwargs)
