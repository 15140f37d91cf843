"""BLIP-2 (``Blip2ForConditionalGeneration`` with a decoder-only language model such as OPT): a ViT
image encoder, a Q-Former whose learned queries read the image, a projection, and the language
model; answers are generated text.

Towers (numbered in this order): ``vision`` (ViT layers), ``qformer`` (Q-Former layers),
``language`` (language-model decoder layers). The prompt is BLIP-2's ``Question: {q} Answer:``
after the query-token placeholders the processor puts first; answers are scored as in
:mod:`.generative`, the image and queries computed once per example. BLIP-2 with a T5 (encoder-
decoder) language model is not supported: its loader stops with a message.
"""

from __future__ import annotations

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessorPil,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from f3ocus_core.families import generative
from f3ocus_core.families.base import Batch, Family
from f3ocus_core.families.offline_tokenizers import word_tokenizer

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
PROMPT = "Question: {question} Answer:"
NUM_QUERY_TOKENS = 4


def prompt(question: str) -> str:
    """BLIP-2's VQA prompt around ``question``."""
    return PROMPT.format(question=question)


def build_processor(questions: list[str], answers: list[str], image_size: int = 32) -> Blip2Processor:
    """An offline BLIP-2 processor: a word-level tokenizer over prompts and answers (BOS added,
    ``<image>`` one token), the PIL BLIP image processor (no torchvision), 4 query tokens."""
    texts = [prompt(q) for q in questions] + list(answers) + list(generative.QUESTION_WORDS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_tokenizer(texts, SPECIAL_TOKENS, "<unk>", "<s> $A", "<s> $A $B"),
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    images = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return Blip2Processor(image_processor=images, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)


def tiny_config(processor: Blip2Processor, labels: list[str]) -> Blip2Config:
    """Hidden 32, 2 layers in each of vision, Q-Former and OPT, 32 px images, 4 queries, eager attention."""
    tokenizer = processor.tokenizer
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = Blip2Config(
        vision_config=dict(**tower, image_size=32, patch_size=8),
        qformer_config=dict(**tower, encoder_hidden_size=32, vocab_size=len(tokenizer)),
        text_config=OPTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            ffn_dim=64,
            word_embed_proj_dim=32,
            vocab_size=len(tokenizer),
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    config._attn_implementation = "eager"  # the setter sets it on every sub-config too
    return config


def _check_decoder_only(model: Blip2ForConditionalGeneration) -> None:
    if not model.config.use_decoder_only_language_model:
        raise ValueError(
            "model.name: BLIP-2 with an encoder-decoder (T5) language model is not supported; use a "
            "BLIP-2 with a decoder-only language model (OPT), e.g. Salesforce/blip2-opt-2.7b."
        )


def _token_logits(base: Blip2ForConditionalGeneration, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The answer rows' token logits, ids and scored mask (:func:`.generative.decoder_only_token_logits`)."""
    _check_decoder_only(base)
    image_token = base.config.image_token_index
    if image_token is None:
        raise ValueError(
            "model.name: the BLIP-2 config sets no image_token_index (where the image features go); "
            "use a checkpoint whose config and processor set it."
        )
    features = base.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output
    return generative.decoder_only_token_logits(
        base.language_model, base.get_input_embeddings(), features, image_token, batch
    )


def _greedy(base: Blip2ForConditionalGeneration, batch: Batch) -> torch.Tensor:
    """Greedy generation per example (decoder-only language models), matched with the answer set."""
    _check_decoder_only(base)
    return generative.greedy_per_example(base, batch, base.config.get_text_config().eos_token_id)


FAMILY = Family(
    name="blip2",
    model_type="blip-2",
    model_class=Blip2ForConditionalGeneration,
    processor_class=Blip2Processor,
    generative=True,
    lora_targets=("qkv", "query", "value", "q_proj", "v_proj"),
    logits=generative.answer_logits(_token_logits),
    make_collate=generative.prompted_collate(prompt),
    build_processor=build_processor,
    tiny_config=tiny_config,
    generate=generative.greedy_answers(_token_logits, _greedy),
)
