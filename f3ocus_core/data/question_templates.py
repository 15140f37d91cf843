"""Question templates that turn a MedMNIST image's class label into a VQA question and answer.

MedVQA-FL (Saha et al., CVPR 2025, arXiv 2411.11912) asks one question per image; its answer comes
from the image's class label.
Each question type has several phrasings, drawn at random with the builder's seeded generator:

- ``modality``: the imaging modality (fixed per source, e.g. "x-ray", "optical coherence tomography");
- ``anatomy``: the body part or organ (fixed per source, or the organ label for OrganA/C/S);
- ``diagnosis``: the disease or finding (ChestMNIST findings, pneumonia, OCT and skin diagnoses,
  breast malignancy, diabetic retinopathy present or not, adenocarcinoma in a pathology patch);
- ``grading``: the diabetic-retinopathy grade 0-4 (RetinaMNIST only);
- ``tissue``: the tissue or cell type (PathMNIST tissues, BloodMNIST cells, TissueMNIST kidney cells);
- ``other``: yes/no questions (is the image normal, is this a given class) and the CT view plane.

:data:`TEMPLATES` says, per source, which types it supports; the builder only asks those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from f3ocus_core.data.medmnist_classes import MEDMNIST_2D

#: The question types of MedVQA-FL, in report order.
QUESTION_TYPES: tuple[str, ...] = ("modality", "anatomy", "diagnosis", "grading", "tissue", "other")

#: Shares of the question types in MedVQA-FL as the paper reports them.
PAPER_SHARES: dict[str, float] = {
    "modality": 0.10,
    "anatomy": 0.20,
    "diagnosis": 0.39,
    "grading": 0.01,
    "tissue": 0.20,
    "other": 0.10,
}

#: (question, answer) for one label, drawing phrasings from the generator.
Ask = Callable[[np.ndarray, np.random.Generator], tuple[str, str]]

#: Readable forms of class names that do not read well inside a sentence; all others are lower-cased.
_DISPLAY = {
    "pleural": "pleural thickening",
    "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)": "immature granulocytes",
}

_MODALITY = (
    "what imaging modality was used to acquire this image?",
    "which modality is shown in this image?",
    "how was this image acquired?",
    "what kind of image is this?",
)
_ANATOMY = (
    "which part of the body is shown in this image?",
    "what body region does this image show?",
    "which organ is being imaged?",
    "what anatomical site is depicted here?",
)
_ORGAN = (
    "which organ is shown in this ct slice?",
    "what organ is in the centre of this image?",
    "name the organ shown in this scan.",
    "which abdominal organ does this slice show?",
)
_PLANE = (
    "in which plane was this ct slice taken?",
    "what is the view plane of this image?",
    "is this an axial, coronal or sagittal slice?",
)
_DIAGNOSIS_OPEN = (
    "what is the diagnosis?",
    "what abnormality is seen in this image?",
    "which disease does this image show?",
    "what is the most likely finding?",
)
_CHEST_YES_NO = (
    "is there {x} in this chest x-ray?",
    "does this image show {x}?",
    "is {x} present?",
)
_VERIFY = (
    "is this {what} {x}?",
    "does this image show {x}?",
    "is the {what} in this image {x}?",
)
_GRADING = (
    "what is the diabetic retinopathy grade of this fundus?",
    "how severe is the diabetic retinopathy, on a scale of 0 to 4?",
    "which grade of retinopathy is visible?",
)


def display_name(flag: str, index: int) -> str:
    """The class name of ``index`` in MedMNIST set ``flag``, as it reads in a question or answer."""
    name = MEDMNIST_2D[flag].labels[index]
    if name in _DISPLAY:
        return _DISPLAY[name]
    for side in ("left", "right"):
        if name.endswith(f"-{side}"):
            return f"{side} {name[: -len(side) - 1]}"
    return name.lower()


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _fixed(questions: Sequence[str], answer: str) -> Ask:
    """A question whose answer is the same for every image of the source (modality, body part)."""
    return lambda label, rng: (_pick(rng, questions), answer)


def _class_name(flag: str, questions: Sequence[str]) -> Ask:
    """An open question answered with the image's class name."""
    return lambda label, rng: (_pick(rng, questions), display_name(flag, int(label)))


def _yes_no(phrasings: Sequence[tuple[str, bool]], truth: Callable[[np.ndarray], object]) -> Ask:
    """A yes/no question; each phrasing says whether "yes" means ``truth(label)`` or its negation."""

    def ask(label: np.ndarray, rng: np.random.Generator) -> tuple[str, str]:
        question, polarity = phrasings[int(rng.integers(len(phrasings)))]
        return question, "yes" if bool(truth(label)) == polarity else "no"

    return ask


def _either(first: Ask, second: Ask) -> Ask:
    """Ask ``first`` or ``second``, half and half."""
    return lambda label, rng: first(label, rng) if rng.random() < 0.5 else second(label, rng)


def _verify(flag: str, what: str) -> Ask:
    """ "Is this <class>?": the true class half of the time, another class otherwise."""
    n = len(MEDMNIST_2D[flag].labels)

    def ask(label: np.ndarray, rng: np.random.Generator) -> tuple[str, str]:
        true = int(label)
        shown = true if rng.random() < 0.5 else int((true + rng.integers(1, n)) % n)
        question = _pick(rng, _VERIFY).format(x=display_name(flag, shown), what=what)
        return question, "yes" if shown == true else "no"

    return ask


def _normal(thing: str, normal: Callable[[np.ndarray], object]) -> Ask:
    return _yes_no(
        (
            (f"is this {thing} normal?", True),
            (f"does this {thing} look healthy?", True),
            (f"is this {thing} abnormal?", False),
        ),
        normal,
    )


def _chest_diagnosis(label: np.ndarray, rng: np.random.Generator) -> tuple[str, str]:
    """ChestMNIST (multi-label): an open question when at most one finding, else "is there <x>?"."""
    names = [display_name("chestmnist", i) for i in range(len(label))]
    positive = [names[i] for i in np.flatnonzero(label)]
    if len(positive) <= 1 and rng.random() < 0.5:
        return _pick(rng, _DIAGNOSIS_OPEN), positive[0] if positive else "no finding"
    finding = _pick(rng, positive) if positive and rng.random() < 0.5 else _pick(rng, names)
    return _pick(rng, _CHEST_YES_NO).format(x=finding), "yes" if finding in positive else "no"


_MALIGNANT_SKIN = {0, 1, 4}  # actinic keratoses / intraepithelial carcinoma, basal cell carcinoma, melanoma

#: Source flag -> question type -> how to ask it. A source supports exactly the types listed.
TEMPLATES: dict[str, dict[str, Ask]] = {
    "chestmnist": {
        "modality": _fixed(_MODALITY, "x-ray"),
        "anatomy": _fixed(_ANATOMY, "chest"),
        "diagnosis": _chest_diagnosis,
        "other": _normal("chest x-ray", lambda label: not np.any(label)),
    },
    "pneumoniamnist": {
        "modality": _fixed(_MODALITY, "x-ray"),
        "anatomy": _fixed(_ANATOMY, "chest"),
        "diagnosis": _either(
            _class_name("pneumoniamnist", _DIAGNOSIS_OPEN),
            _yes_no(
                (("does this chest x-ray show pneumonia?", True), ("is there pneumonia?", True)),
                lambda c: c == 1,
            ),
        ),
        "other": _normal("chest x-ray", lambda c: c == 0),
    },
    "octmnist": {
        "modality": _fixed(_MODALITY, "optical coherence tomography"),
        "anatomy": _fixed(_ANATOMY, "retina"),
        "diagnosis": _class_name("octmnist", (*_DIAGNOSIS_OPEN, "which retinal disease does this oct scan show?")),
        "other": _normal("retina", lambda c: c == 3),
    },
    "pathmnist": {
        "modality": _fixed(_MODALITY, "histopathology"),
        "anatomy": _fixed(_ANATOMY, "colon"),
        "diagnosis": _yes_no(
            (
                ("is there colorectal adenocarcinoma in this tissue?", True),
                ("does this patch show tumour epithelium?", True),
                ("is this tissue free of cancer cells?", False),
            ),
            lambda c: c == 8,
        ),
        "tissue": _class_name(
            "pathmnist",
            (
                "what type of tissue is shown?",
                "which tissue class does this patch belong to?",
                "what tissue is this?",
            ),
        ),
        "other": _verify("pathmnist", "tissue"),
    },
    "dermamnist": {
        "modality": _fixed(_MODALITY, "dermoscopy"),
        "anatomy": _fixed(_ANATOMY, "skin"),
        "diagnosis": _class_name(
            "dermamnist",
            (*_DIAGNOSIS_OPEN, "what type of skin lesion is this?", "which skin disease is shown?"),
        ),
        "other": _yes_no(
            (("is this lesion malignant?", True), ("is this skin lesion benign?", False)),
            lambda c: c in _MALIGNANT_SKIN,
        ),
    },
    "retinamnist": {
        "modality": _fixed(_MODALITY, "fundus photography"),
        "anatomy": _fixed(_ANATOMY, "retina"),
        "diagnosis": _yes_no(
            (
                ("does this eye show diabetic retinopathy?", True),
                ("is there any sign of diabetic retinopathy?", True),
                ("is this fundus free of diabetic retinopathy?", False),
            ),
            lambda c: c > 0,
        ),
        "grading": _class_name("retinamnist", _GRADING),
        "other": _normal("fundus", lambda c: c == 0),
    },
    "breastmnist": {
        "modality": _fixed(_MODALITY, "ultrasound"),
        "anatomy": _fixed(_ANATOMY, "breast"),
        "diagnosis": _class_name(
            "breastmnist",
            (
                "is this breast lesion malignant or normal/benign?",
                "what is the diagnosis?",
                "how would you classify this breast ultrasound?",
            ),
        ),
        "other": _yes_no(
            (
                ("is there a malignant tumour in this image?", True),
                ("is this breast normal or benign?", False),
            ),
            lambda c: c == 0,
        ),
    },
    "bloodmnist": {
        "modality": _fixed(_MODALITY, "microscopy"),
        "anatomy": _fixed(_ANATOMY, "blood"),
        "tissue": _class_name(
            "bloodmnist",
            (
                "what type of blood cell is this?",
                "which cell type is shown?",
                "identify the cell in this image.",
            ),
        ),
        "other": _verify("bloodmnist", "cell"),
    },
    "tissuemnist": {
        "modality": _fixed(_MODALITY, "microscopy"),
        "anatomy": _fixed(_ANATOMY, "kidney"),
        "tissue": _class_name(
            "tissuemnist",
            (
                "which kidney cell type or structure is this?",
                "what type of cell is shown?",
                "what tissue component is in this image?",
            ),
        ),
        "other": _verify("tissuemnist", "cell"),
    },
    **{
        flag: {
            "modality": _fixed(_MODALITY, "ct"),
            "anatomy": _class_name(flag, _ORGAN),
            "other": _either(_fixed(_PLANE, view), _verify(flag, "organ")),
        }
        for flag, view in (("organamnist", "axial"), ("organcmnist", "coronal"), ("organsmnist", "sagittal"))
    },
}


def ask(flag: str, question_type: str, label: np.ndarray, rng: np.random.Generator) -> tuple[str, str]:
    """A (question, answer) of ``question_type`` about an image of source ``flag`` with ``label``."""
    try:
        template = TEMPLATES[flag][question_type]
    except KeyError:
        raise KeyError(
            f"Source {flag!r} has no {question_type!r} questions; it supports {sorted(TEMPLATES[flag])}."
        ) from None
    return template(label, rng)
