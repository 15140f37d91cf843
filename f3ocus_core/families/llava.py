"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP vision tower, a two-layer projector and a
Llama language model; answers are generated text.

Towers (numbered in this order): ``vision`` (CLIP encoder layers), ``language`` (Llama decoder
layers). The projector belongs to no layer. The prompt is LLaVA-1.5's
``USER: <image>\\n{question} ASSISTANT:``; answers are scored as in :mod:`.generative`. The image is
encoded once per example and its features are placed into every (example, answer) sequence, so the
vision tower sees ``n`` rows and the language model ``n x A``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from f3ocus_core.families import generative
from f3ocus_core.families.base import Batch, Family
from f3ocus_core.families.offline_tokenizers import word_tokenizer

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
PROMPT = "USER: <image>\n{question} ASSISTANT:"


def prompt(question: str) -> str:
    """LLaVA-1.5's single-turn prompt around ``question``."""
    return PROMPT.format(question=question)


def build_processor(
    questions: list[str], answers: list[str], image_size: int = 32, patch_size: int = 8
) -> LlavaProcessor:
    """An offline LLaVA processor: a word-level tokenizer over the prompts and answers (BOS added,
    ``<image>`` one token) and a CLIP image processor (the PIL one: no torchvision)."""
    texts = [prompt(q) for q in questions] + list(answers) + list(generative.QUESTION_WORDS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_tokenizer(texts, SPECIAL_TOKENS, "<unk>", "<s> $A", "<s> $A $B"),
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    images = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )


def tiny_config(processor: LlavaProcessor, labels: list[str]) -> LlavaConfig:
    """Hidden 32, 2 CLIP layers on 32 px images in 8 px patches, 2 Llama layers, eager attention.

    The projector reads the last vision layer (LLaVA-1.5 reads the second to last), so that every
    vision layer of the tiny model matters.
    """
    tokenizer = processor.tokenizer
    tower: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**tower, image_size=32, patch_size=8),
        text_config=LlamaConfig(
            **tower,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = "eager"  # the setter sets it on every sub-config too
    return config


def _token_logits(base: LlavaForConditionalGeneration, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The answer rows' token logits, ids and scored mask (:func:`.generative.decoder_only_token_logits`)."""
    config = base.config
    features = base.model.get_image_features(
        pixel_values=batch["pixel_values"],
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output
    return generative.decoder_only_token_logits(
        base, base.get_input_embeddings(), torch.stack(list(features)), config.image_token_index, batch
    )


def _greedy(base: LlavaForConditionalGeneration, batch: Batch) -> torch.Tensor:
    """Greedy generation per example, matched with the answer set."""
    return generative.greedy_per_example(base, batch, base.config.get_text_config().eos_token_id)


FAMILY = Family(
    name="llava",
    model_type="llava",
    model_class=LlavaForConditionalGeneration,
    processor_class=LlavaProcessor,
    generative=True,
    lora_targets=("q_proj", "v_proj"),
    logits=generative.answer_logits(_token_logits),
    make_collate=generative.prompted_collate(prompt),
    build_processor=build_processor,
    tiny_config=tiny_config,
    generate=generative.greedy_answers(_token_logits, _greedy),
)
