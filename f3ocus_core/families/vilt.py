"""ViLT (``ViltForQuestionAnswering``): one single-stream tower and a linear answer head.

The answer head is a multi-label head trained with binary cross-entropy, as ViLT's VQA head is, so one
head serves both VQA and multi-label classification; its logits are the answer scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import BertTokenizer, ViltConfig, ViltForQuestionAnswering, ViltProcessor

from f3ocus_core.families.base import Batch, Collate, Family, model_inputs, multi_hot
from f3ocus_core.families.offline_tokenizers import word_tokenizer

if TYPE_CHECKING:
    from transformers import ProcessorMixin

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def tiny_vilt_config(num_labels: int = 13, vocab_size: int = 200, **overrides: Any) -> ViltConfig:
    """A ViLT small enough for CPU tests: hidden 64, 4 layers, 64 x 64 images in 16 x 16 patches.

    Eager attention, so that forward-mode and double-backward autodiff work through it.
    """
    settings: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        max_position_embeddings=40,
        vocab_size=vocab_size,
        num_labels=num_labels,
        max_image_length=-1,
        id2label={i: f"answer-{i}" for i in range(num_labels)},
        label2id={f"answer-{i}": i for i in range(num_labels)},
    )
    settings.update(overrides)
    config = ViltConfig(**settings)
    config._attn_implementation = "eager"
    return config


def tiny_vilt(num_labels: int = 13, seed: int = 0, **overrides: Any) -> ViltForQuestionAnswering:
    """A randomly initialised tiny ViLT for question answering (see :func:`tiny_vilt_config`)."""
    torch.manual_seed(seed)
    return ViltForQuestionAnswering(tiny_vilt_config(num_labels=num_labels, **overrides)).eval()


def random_batch(config: ViltConfig, n: int = 8, seq_len: int = 12, seed: int = 0) -> Batch:
    """A batch of random inputs and one-hot labels shaped for ``config``: for tests and benchmarks."""
    gen = torch.Generator().manual_seed(seed)
    size, num_labels = config.image_size, config.num_labels
    if not isinstance(size, int) or num_labels is None:
        raise ValueError("random_batch needs a config with one int image_size and num_labels set.")
    labels = torch.zeros(n, num_labels)
    labels[torch.arange(n), torch.randint(0, num_labels, (n,), generator=gen)] = 1.0
    return {
        "input_ids": torch.randint(0, config.vocab_size, (n, seq_len), generator=gen),
        "attention_mask": torch.ones(n, seq_len, dtype=torch.long),
        "pixel_values": torch.randn(n, 3, size, size, generator=gen),
        "pixel_mask": torch.ones(n, size, size, dtype=torch.long),
        "labels": labels,
    }


def build_processor(texts: list[str], image_size: int = 64) -> ViltProcessor:
    """An offline ViLT processor: a WordPiece tokenizer whose vocabulary is the words of ``texts``
    (lower-cased, BERT pre-tokenisation) and an image processor that resizes to ``image_size``.

    Built with the ``tokenizers`` library, so that it works with no hub access; save it with
    ``save_pretrained`` and it loads with ``ViltProcessor.from_pretrained`` like any hub processor.
    """
    from transformers import ViltImageProcessorPil

    tokenizer = word_tokenizer(texts, SPECIAL_TOKENS, "[UNK]", "[CLS] $A [SEP]", "[CLS] $A [SEP] $B [SEP]")
    fast = BertTokenizer(  # transformers 5: BertTokenizer is the fast one (BertTokenizerFast an alias)
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    # size_divisor is one of ViltImageProcessorKwargs; the base __init__'s Unpack[ImagesKwargs] misses it.
    images = ViltImageProcessorPil(  # type: ignore[call-arg]
        size={"shortest_edge": image_size}, size_divisor=image_size // 2, do_pad=True
    )
    return ViltProcessor(image_processor=images, tokenizer=fast)


def set_answer_head(model: torch.nn.Module, labels: list[str], seed: int = 0) -> None:
    """Give ``model`` an answer head over ``labels``, keeping the trained rows of known answers.

    Rows of answers that the current head already has (by ``config.id2label``) are copied; the rest
    start from a seeded random initialisation. Updates ``config.id2label``/``label2id``/``num_labels``.
    """
    if not isinstance(model, ViltForQuestionAnswering):
        raise TypeError(f"set_answer_head: expected a ViltForQuestionAnswering, got {type(model).__name__}.")
    old = model.classifier[-1]
    assert isinstance(old, torch.nn.Linear), "ViLT's answer head ends in a Linear layer"
    known = {str(label): int(i) for i, label in (model.config.id2label or {}).items()}
    generator = torch.Generator().manual_seed(seed)
    new = torch.nn.Linear(old.in_features, len(labels))
    with torch.no_grad():
        new.weight.normal_(0.0, model.config.initializer_range, generator=generator)
        new.bias.zero_()
        for row, label in enumerate(labels):
            if label in known:
                new.weight[row] = old.weight[known[label]]
                new.bias[row] = old.bias[known[label]]
    model.classifier[-1] = new
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


def logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Answer-head logits ``(n, num_labels)``."""
    return model(**model_inputs(batch)).logits


def make_collate(
    processor: ProcessorMixin, labels: list[str], max_text_len: int = 40, multi_label: bool = False
) -> Collate:
    """Rows (``image``, ``question``, ``answers``) -> processor outputs plus multi-hot ``labels``.

    Images are converted to RGB (medical sets are often grey-scale). ``multi_label`` changes nothing:
    the answer head scores each label on its own already.
    """

    def collate(rows: list[dict]) -> Batch:
        encoded = processor(
            images=[row["image"].convert("RGB") for row in rows],
            text=[row["question"] for row in rows],
            padding="longest",
            truncation=True,
            max_length=max_text_len,
            return_tensors="pt",
        )
        batch = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
        batch["labels"] = multi_hot(rows, labels)
        return batch

    return collate


def _tiny_config(processor: ViltProcessor, labels: list[str]) -> ViltConfig:
    config = tiny_vilt_config(num_labels=len(labels), vocab_size=len(processor.tokenizer))
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    return config


FAMILY = Family(
    name="vilt",
    model_type="vilt",
    model_class=ViltForQuestionAnswering,
    processor_class=ViltProcessor,
    generative=False,
    lora_targets=("query", "value", "dense"),
    logits=logits,
    make_collate=make_collate,
    build_processor=lambda questions, answers: build_processor(questions),
    tiny_config=_tiny_config,
)
