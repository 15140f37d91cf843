"""Vision-language models: tiny configs for tests, the task head, and the forward and loss F3OCUS uses.

A *batch* everywhere in ``f3ocus_core`` is a dict of tensors as a Hugging Face processor returns it
(``input_ids``, ``attention_mask``, ``pixel_values``, ...) plus ``labels``: a float tensor
``(n, num_labels)`` of targets (one-hot for VQA, multi-hot for multi-label tasks). The answer head is
a multi-label head trained with binary cross-entropy, as ViLT's VQA head is, so one head serves both
kinds of task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import ViltConfig, ViltForQuestionAnswering, ViltProcessor


def tiny_vilt_config(num_labels: int = 13, vocab_size: int = 200, **overrides: object) -> ViltConfig:
    """A ViLT small enough for CPU tests: hidden 64, 4 layers, 64 x 64 images in 16 x 16 patches.

    Eager attention, so that forward-mode and double-backward autodiff work through it.
    """
    settings: dict[str, object] = dict(
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


def tiny_vilt(num_labels: int = 13, seed: int = 0, **overrides: object) -> ViltForQuestionAnswering:
    """A randomly initialised tiny ViLT for question answering (see :func:`tiny_vilt_config`)."""
    torch.manual_seed(seed)
    return ViltForQuestionAnswering(tiny_vilt_config(num_labels=num_labels, **overrides)).eval()


def random_batch(
    config: ViltConfig, n: int = 8, seq_len: int = 12, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A batch of random inputs and one-hot labels shaped for ``config``: for tests and benchmarks."""
    gen = torch.Generator().manual_seed(seed)
    size = config.image_size
    labels = torch.zeros(n, config.num_labels)
    labels[torch.arange(n), torch.randint(0, config.num_labels, (n,), generator=gen)] = 1.0
    return {
        "input_ids": torch.randint(0, config.vocab_size, (n, seq_len), generator=gen),
        "attention_mask": torch.ones(n, seq_len, dtype=torch.long),
        "pixel_values": torch.randn(n, 3, size, size, generator=gen),
        "pixel_mask": torch.ones(n, size, size, dtype=torch.long),
        "labels": labels,
    }


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of ``batch`` the model reads (everything but ``labels``)."""
    return {key: value for key, value in batch.items() if key != "labels"}


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Answer-head logits ``(n, num_labels)`` of ``model`` on ``batch``."""
    return model(**model_inputs(batch)).logits


def loss_of(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy of ``logits`` against ``batch["labels"]``, summed over labels and
    averaged over examples (ViLT's VQA loss)."""
    labels = batch["labels"].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / logits.shape[0]


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_processor(texts: list[str], image_size: int = 64) -> ViltProcessor:
    """An offline ViLT processor: a WordPiece tokenizer whose vocabulary is the words of ``texts``
    (lower-cased, BERT pre-tokenisation) and an image processor that resizes to ``image_size``.

    Built with the ``tokenizers`` library, so that it works with no hub access; save it with
    ``save_pretrained`` and it loads with ``ViltProcessor.from_pretrained`` like any hub processor.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertTokenizerFast, ViltImageProcessorPil

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = sorted(
        {
            word
            for text in texts
            for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        }
    )
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    images = ViltImageProcessorPil(
        size={"shortest_edge": image_size}, size_divisor=image_size // 2, do_pad=True
    )
    return ViltProcessor(image_processor=images, tokenizer=fast)


def set_answer_head(model: torch.nn.Module, labels: list[str], seed: int = 0) -> None:
    """Give ``model`` an answer head over ``labels``, keeping the trained rows of known answers.

    Rows of answers that the current head already has (by ``config.id2label``) are copied; the rest
    start from a seeded random initialisation. Updates ``config.id2label``/``label2id``/``num_labels``.
    """
    if not labels:
        raise ValueError("The answer head needs at least one label.")
    if len(set(labels)) != len(labels):
        raise ValueError("The labels of an answer head must be distinct.")
    old = model.classifier[-1]
    known = {str(label): i for i, label in model.config.id2label.items()}
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


def load_vqa_model(path: str, attn_implementation: str = "eager") -> tuple[ViltForQuestionAnswering, object]:
    """Load a ViLT question-answering model and its processor with ``from_pretrained``.

    ``path`` is a local folder or a Hugging Face hub id (such as
    ``dandelin/vilt-b32-finetuned-vqa``); hub ids need network access or a filled HF cache.

    Raises
    ------
    ValueError
        Naming ``model.name`` when nothing loadable is found there.
    """
    try:
        processor = ViltProcessor.from_pretrained(path)
        model = ViltForQuestionAnswering.from_pretrained(path, attn_implementation=attn_implementation)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model.name: cannot load a ViLT question-answering model and processor from {path!r} "
            f"({error}). Give a local folder written by save_pretrained, a hub id with network "
            "access, or the built-in default 'builtin:tiny-vilt-easyvqa'."
        ) from error
    return model.eval(), processor
