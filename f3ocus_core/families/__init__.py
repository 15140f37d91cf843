"""The model families F3OCUS can fine-tune, and the registry that maps a model to its family.

============= ====================================== ==========================================
family        Hugging Face class                     towers (layers numbered in this order)
============= ====================================== ==========================================
``vilt``      ``ViltForQuestionAnswering``           ``layer``
``blip``      ``BlipForQuestionAnswering``           ``vision``, ``text``, ``decoder``
``blip2``     ``Blip2ForConditionalGeneration``      ``vision``, ``qformer``, ``language``
``llava``     ``LlavaForConditionalGeneration``      ``vision``, ``language``
``paligemma`` ``PaliGemmaForConditionalGeneration``  ``vision``, ``language``
============= ====================================== ==========================================

A model's family is found from its ``config.model_type`` (PEFT wrappers are looked through); a
processor's from its class. See docs/models.md.
"""

from __future__ import annotations

import torch

from f3ocus_core.families import blip, blip2, llava, paligemma, vilt
from f3ocus_core.families.base import Family, unwrap

#: Every family, by name, in the order docs list them.
FAMILIES: dict[str, Family] = {
    family.name: family for family in (vilt.FAMILY, blip.FAMILY, blip2.FAMILY, llava.FAMILY, paligemma.FAMILY)
}

__all__ = ["FAMILIES", "Family", "family_named", "family_of", "family_of_processor", "family_of_type", "unwrap"]


def family_named(name: str) -> Family:
    """The family called ``name``; ``ValueError`` listing the families if there is none."""
    if name not in FAMILIES:
        raise ValueError(f"No model family {name!r}; the families are {sorted(FAMILIES)}.")
    return FAMILIES[name]


def family_of_type(model_type: str) -> Family:
    """The family whose Hugging Face ``model_type`` is ``model_type``.

    Raises
    ------
    ValueError
        Naming ``model.name`` and listing the families, when no family has that model type.
    """
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    known = ", ".join(f"{f.name} ({f.model_class.__name__})" for f in FAMILIES.values())
    raise ValueError(
        f"model.name: the model is a {model_type!r}, which no model family supports; the families are: {known}."
    )


def family_of(model: torch.nn.Module) -> Family:
    """The family of ``model`` (bare or PEFT-wrapped), from its ``config.model_type``."""
    config = getattr(unwrap(model), "config", None)
    if config is None:
        raise ValueError("The model has no Hugging Face config; cannot tell its family.")
    return family_of_type(config.model_type)


def family_of_processor(processor: object) -> Family:
    """The family whose processor class ``processor`` is an instance of."""
    for family in FAMILIES.values():
        if isinstance(processor, family.processor_class):
            return family
    raise ValueError(
        f"No model family uses a {type(processor).__name__}; the families' processors are "
        f"{[f.processor_class.__name__ for f in FAMILIES.values()]}."
    )
