"""BLIP (``BlipForQuestionAnswering``): a ViT image encoder, a BERT question encoder that
cross-attends to the image, and a BERT answer decoder that cross-attends to the question; answers
are generated text.

Towers (numbered in this order): ``vision`` (ViT layers), ``text`` (question encoder layers),
``decoder`` (answer decoder layers). Answers are scored as in :mod:`.generative`, the decoder input
being ``[DEC] answer [SEP]`` as in BLIP's own answer ranking; image and question are encoded once per
example, so only the decoder sees ``n x A`` rows.
"""

from __future__ import annotations

import torch
from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

from f3ocus_core.families import generative
from f3ocus_core.families.base import Batch, Collate, Family
from f3ocus_core.families.offline_tokenizers import word_tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def build_processor(questions: list[str], answers: list[str], image_size: int = 32) -> BlipProcessor:
    """An offline BLIP processor: a word-level BERT tokenizer over questions and answers (with BLIP's
    ``[DEC]`` decoder start token) and the PIL BLIP image processor (no torchvision)."""
    tokenizer = BertTokenizer(  # transformers 5: BertTokenizer is the fast one (BertTokenizerFast an alias)
        tokenizer_object=word_tokenizer(
            list(questions) + list(answers) + list(generative.QUESTION_WORDS),
            SPECIAL_TOKENS,
            "[UNK]",
            "[CLS] $A [SEP]",
            "[CLS] $A [SEP] $B [SEP]",
        ),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[DEC]",
    )
    images = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=images, tokenizer=tokenizer)


def tiny_config(processor: BlipProcessor, labels: list[str]) -> BlipConfig:
    """Hidden 32, 2 layers in each of the three towers, 32 px images in 8 px patches, eager attention."""
    tokenizer = processor.tokenizer
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = BlipConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokenizer),
            encoder_hidden_size=32,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
        ),
        vision_config=dict(**tower, image_size=32, patch_size=8),
    )
    config._attn_implementation = "eager"  # the setter sets it on every sub-config too
    return config


def _question_states(model: BlipForQuestionAnswering, batch: Batch) -> torch.Tensor:
    """The question encoder's states, cross-attending to the image: ``(n, P, hidden)``."""
    image = model.vision_model(pixel_values=batch["pixel_values"])[0]
    image_mask = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
    return model.text_encoder(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        encoder_hidden_states=image,
        encoder_attention_mask=image_mask,
    )[0]


def _token_logits(base: BlipForQuestionAnswering, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's token logits ``(n*A, T, V)`` on the answer rows, their ids and mask."""
    count = batch["answer_ids"].shape[1]
    question = _question_states(base, batch)
    ids, mask = batch["answer_ids"].flatten(0, 1), batch["answer_mask"].flatten(0, 1)
    out = base.text_decoder(
        input_ids=ids,
        attention_mask=mask,
        encoder_hidden_states=generative.repeat_rows(question, count),
        encoder_attention_mask=generative.repeat_rows(batch["attention_mask"], count),
    )
    return out.logits, ids, mask


def _greedy(base: BlipForQuestionAnswering, batch: Batch) -> torch.Tensor:
    """Greedy answer generation (batched) by the answer decoder, matched with the answer set."""
    question = _question_states(base, batch)
    eos = base.config.get_text_config().sep_token_id
    start = batch["answer_ids"][:, 0, :1]

    def step(ids: torch.Tensor) -> torch.Tensor:
        return base.text_decoder(
            input_ids=ids, encoder_hidden_states=question, encoder_attention_mask=batch["attention_mask"]
        ).logits[:, -1]

    generated = generative.greedy(step, start, batch["answer_ids"].shape[2], eos)
    return generative.matches(generated, batch, eos, skip=1)


def make_collate(
    processor: BlipProcessor, labels: list[str], max_text_len: int = 40, multi_label: bool = False
) -> Collate:
    """Questions through the processor; answers as ``[DEC] answer [SEP]`` (multi-label: ``[DEC] label?``)."""
    tokenizer = processor.tokenizer
    start = [tokenizer.convert_tokens_to_ids("[DEC]")]
    return generative.make_collate(
        processor, labels, lambda q: q, start, tokenizer.sep_token_id, max_text_len, multi_label
    )


FAMILY = Family(
    name="blip",
    model_type="blip",
    model_class=BlipForQuestionAnswering,
    processor_class=BlipProcessor,
    generative=True,
    lora_targets=("qkv", "query", "value"),
    logits=generative.answer_logits(_token_logits),
    make_collate=make_collate,
    build_processor=build_processor,
    tiny_config=tiny_config,
    generate=generative.greedy_answers(_token_logits, _greedy),
)
