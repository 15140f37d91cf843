"""PaliGemma (``PaliGemmaForConditionalGeneration``): a SigLIP vision tower, a linear projector and a
Gemma language model whose prompt (image and question) attends both ways; answers are generated
text. The current small VLM family here: its processor uses SigLIP's PIL image processor, so it
needs no torchvision.

Towers (numbered in this order): ``vision`` (SigLIP encoder layers), ``language`` (Gemma decoder
layers). The prompt is the question (PaliGemma's processor puts the image tokens and BOS first);
answers end in EOS and are scored as in :mod:`.generative` with the prefix-LM mask (``token_type_ids``).
"""

from __future__ import annotations

import torch
from transformers import (
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from f3ocus_core.families import generative
from f3ocus_core.families.base import Batch, Family
from f3ocus_core.families.offline_tokenizers import word_tokenizer

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<image>")


def prompt(question: str) -> str:
    """The question after one ``<image>`` placeholder, which the processor expands to the image tokens
    and follows with BOS."""
    return f"<image>{question}"


def build_processor(
    questions: list[str], answers: list[str], image_size: int = 32, patch_size: int = 8
) -> PaliGemmaProcessor:
    """An offline PaliGemma processor: a word-level tokenizer over questions and answers (PaliGemma's
    processor adds its location and segmentation tokens) and SigLIP's PIL image processor."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_tokenizer(
            list(questions) + list(answers) + list(generative.QUESTION_WORDS), SPECIAL_TOKENS, "<unk>", "$A", "$A $B"
        ),
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    images = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_seq_length=(image_size // patch_size) ** 2
    )
    return PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer)


def tiny_config(processor: PaliGemmaProcessor, labels: list[str]) -> PaliGemmaConfig:
    """Hidden 32, 2 SigLIP layers on 32 px images in 8 px patches, 2 Gemma layers, eager attention."""
    tokenizer = processor.tokenizer
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            vision_use_head=False,
        ),
        text_config=GemmaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=64,
            vocab_size=len(tokenizer),
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=32,
    )
    config._attn_implementation = "eager"  # the setter sets it on every sub-config too
    return config


def _token_logits(
    base: PaliGemmaForConditionalGeneration, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The answer rows' token logits, ids and scored mask (:func:`.generative.decoder_only_token_logits`)."""
    features = base.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    return generative.decoder_only_token_logits(
        base, base.get_input_embeddings(), features, base.config.image_token_index, batch, prefix_lm=True
    )


def _greedy(base: PaliGemmaForConditionalGeneration, batch: Batch) -> torch.Tensor:
    """Greedy generation per example (the prompt attends both ways), matched with the answer set."""
    return generative.greedy_per_example(base, batch, base.config.get_text_config().eos_token_id, prefix_lm=True)


FAMILY = Family(
    name="paligemma",
    model_type="paligemma",
    model_class=PaliGemmaForConditionalGeneration,
    processor_class=PaliGemmaProcessor,
    generative=True,
    lora_targets=("q_proj", "v_proj"),
    logits=generative.answer_logits(_token_logits),
    make_collate=generative.prompted_collate(prompt),
    build_processor=build_processor,
    tiny_config=tiny_config,
    generate=generative.greedy_answers(_token_logits, _greedy),
)
